"""The lifecycle state machine: every legal transition, and every illegal one refused without a trace."""

from __future__ import annotations

import itertools

import pytest

from canaryd.domain.lifecycle import (
    ACTIVE_STATES,
    TRIGGERS,
    IllegalTransition,
    Lifecycle,
    allowed_triggers,
)
from canaryd.domain.types import State

S = State

# (state, paused_from, trigger) -> (new state, new paused_from): the whole lifecycle, written out by hand.
LEGAL: dict[tuple[State, State | None, str], tuple[State, State | None]] = {
    (S.PENDING, None, "start"): (S.DEPLOYING, None),
    (S.DEPLOYING, None, "canary_ready"): (S.MONITORING, None),
    (S.DEPLOYING, None, "pause"): (S.PAUSED, S.DEPLOYING),
    (S.MONITORING, None, "pause"): (S.PAUSED, S.MONITORING),
    (S.PAUSED, S.DEPLOYING, "resume"): (S.DEPLOYING, None),
    (S.PAUSED, S.MONITORING, "resume"): (S.MONITORING, None),
    (S.MONITORING, None, "await_approval"): (S.WAITING_FOR_APPROVAL, None),
    (S.WAITING_FOR_APPROVAL, None, "approve"): (S.MONITORING, None),
    (S.WAITING_FOR_APPROVAL, None, "promote"): (S.PROMOTING, None),
    (S.WAITING_FOR_APPROVAL, None, "rollback"): (S.ROLLING_BACK, None),
    (S.MONITORING, None, "promote"): (S.PROMOTING, None),
    (S.PAUSED, S.DEPLOYING, "promote"): (S.PROMOTING, None),
    (S.PAUSED, S.MONITORING, "promote"): (S.PROMOTING, None),
    (S.PROMOTING, None, "complete"): (S.COMPLETED, None),
    (S.PENDING, None, "rollback"): (S.ROLLING_BACK, None),
    (S.DEPLOYING, None, "rollback"): (S.ROLLING_BACK, None),
    (S.MONITORING, None, "rollback"): (S.ROLLING_BACK, None),
    (S.PAUSED, S.DEPLOYING, "rollback"): (S.ROLLING_BACK, None),
    (S.PAUSED, S.MONITORING, "rollback"): (S.ROLLING_BACK, None),
    (S.PROMOTING, None, "rollback"): (S.ROLLING_BACK, None),
    (S.ROLLING_BACK, None, "finish_rollback"): (S.ROLLED_BACK, None),
    (S.FAILED, None, "finish_rollback"): (S.ROLLED_BACK, None),
    (S.ROLLING_BACK, None, "fail"): (S.FAILED, None),
}

# Every state a lifecycle can be in, with the paused_from it may carry.
POSITIONS = [(s, None) for s in State if s is not S.PAUSED] + [
    (S.PAUSED, S.DEPLOYING),
    (S.PAUSED, S.MONITORING),
]

ILLEGAL = [
    (state, paused_from, trigger)
    for (state, paused_from), trigger in itertools.product(POSITIONS, TRIGGERS)
    if (state, paused_from, trigger) not in LEGAL
]


@pytest.mark.parametrize(("state", "paused_from", "trigger"), list(LEGAL))
def test_legal_transition(state: State, paused_from: State | None, trigger: str) -> None:
    """Each legal trigger moves to the expected state and sets paused_from as expected."""
    lifecycle = Lifecycle(state, paused_from)
    assert lifecycle.can(trigger)
    assert lifecycle.why_not(trigger) is None
    expected_state, expected_paused_from = LEGAL[(state, paused_from, trigger)]
    assert lifecycle.fire(trigger) is expected_state
    assert (lifecycle.state, lifecycle.paused_from) == (expected_state, expected_paused_from)


@pytest.mark.parametrize(("state", "paused_from", "trigger"), ILLEGAL)
def test_illegal_trigger_raises_and_changes_nothing(
    state: State, paused_from: State | None, trigger: str
) -> None:
    """An illegal trigger raises IllegalTransition and leaves state and paused_from untouched."""
    lifecycle = Lifecycle(state, paused_from)
    assert not lifecycle.can(trigger)
    with pytest.raises(IllegalTransition) as caught:
        lifecycle.fire(trigger)
    assert (caught.value.trigger, caught.value.state) == (trigger, state)
    assert str(caught.value) == lifecycle.why_not(trigger)
    assert (lifecycle.state, lifecycle.paused_from) == (state, paused_from)
    # The same object still works afterwards: its first legal trigger (if any) fires as the table says.
    legal = sorted(allowed_triggers(state))
    if legal:
        assert lifecycle.fire(legal[0]) is LEGAL[(state, paused_from, legal[0])][0]


def test_illegal_message_says_why() -> None:
    """The message names the trigger, the current state and where the trigger is possible."""
    lifecycle = Lifecycle(State.PROMOTING)
    assert lifecycle.why_not("pause") == (
        "cannot pause a deployment that is promoting; pause is possible while deploying or monitoring"
    )
    assert Lifecycle(State.COMPLETED).why_not("rollback") == (
        "cannot roll back a deployment that has completed; "
        "rollback is possible while pending, deploying, monitoring, waiting for approval, paused or promoting"
    )


@pytest.mark.parametrize("method", ["fire", "can", "why_not"])
def test_unknown_trigger_is_a_value_error(method: str) -> None:
    """A trigger name that does not exist raises ValueError, not IllegalTransition."""
    lifecycle = Lifecycle(State.MONITORING)
    with pytest.raises(ValueError, match="unknown trigger 'explode'"):
        getattr(lifecycle, method)("explode")
    assert lifecycle.state is State.MONITORING


@pytest.mark.parametrize(("state", "paused_from"), POSITIONS)
def test_allowed_triggers_match_the_table(state: State, paused_from: State | None) -> None:
    """allowed_triggers(state) lists exactly the legal triggers of that state."""
    expected = {t for (s, p, t) in LEGAL if s is state and p == paused_from}
    assert allowed_triggers(state) == expected
    assert Lifecycle(state, paused_from).allowed() == expected


@pytest.mark.parametrize(
    ("state", "active"),
    [(s, s not in (State.COMPLETED, State.ROLLED_BACK)) for s in State],
)
def test_active_states(state: State, active: bool) -> None:
    """Everything but completed and rolled_back is active; failed keeps retrying its rollback."""
    assert (state in ACTIVE_STATES) is active


@pytest.mark.parametrize(
    ("state", "paused_from"),
    [(State.PAUSED, None), (State.PAUSED, State.PROMOTING), (State.MONITORING, State.DEPLOYING)],
)
def test_inconsistent_paused_from_is_refused(state: State, paused_from: State | None) -> None:
    """A paused lifecycle must know where it was paused from, and only a paused one may."""
    with pytest.raises(ValueError, match="paused"):
        Lifecycle(state, paused_from)


def test_happy_path_with_pause() -> None:
    """A full run: start, ready, pause, resume, promote, complete."""
    lifecycle = Lifecycle(State.PENDING)
    for trigger in ["start", "canary_ready", "pause", "resume", "promote", "complete"]:
        lifecycle.fire(trigger)
    assert lifecycle.state is State.COMPLETED
    assert lifecycle.paused_from is None


def test_failed_rollback_can_still_finish() -> None:
    """A rollback that failed stays active and can finish later."""
    lifecycle = Lifecycle(State.MONITORING)
    assert [lifecycle.fire(t) for t in ["rollback", "fail", "finish_rollback"]] == [
        State.ROLLING_BACK,
        State.FAILED,
        State.ROLLED_BACK,
    ]


def test_state_accepts_plain_strings() -> None:
    """A state read from the database as a string is accepted."""
    lifecycle = Lifecycle(State("paused"), State("monitoring"))
    assert lifecycle.fire("resume") is State.MONITORING
