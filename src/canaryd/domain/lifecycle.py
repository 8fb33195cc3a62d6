"""The lifecycle of a deployment: which state follows which, and on what trigger.

The rules, in prose
===================

A deployment is created ``pending``. A worker fires ``start`` (``deploying``): canary servers are chosen,
drained and given the new version. When every canary instance passes its health check the engine fires
``canary_ready`` and the deployment is ``monitoring``: stage after stage, a growing share of requests goes
to the canary while the judge compares it with the stable cohort.

``pause`` freezes a deployment that is deploying or monitoring; ``resume`` returns it to exactly the
state it was paused from, which is why a paused deployment remembers ``paused_from``. A paused deployment
keeps its current split; nothing advances while it is paused.

A stage listed in the deployment's ``approve_before`` waits for a person: instead of advancing into it the
engine fires ``await_approval`` (``waiting_for_approval``), which holds the previous stage's split and keeps
judging it; a person's ``approve`` (asked for as ``resume`` or ``promote {"to": "next"}``) returns to
``monitoring`` in the approved stage. A waiting deployment can be promoted or rolled back like a monitoring
one, by a person or by the judge.

``promote`` ends monitoring (the engine fires it after the last stage; a person may fire it earlier, also
from ``paused``): every stable server gets the new version, one at a time, and ``complete`` marks the end.

``rollback`` is possible from every state in which the new version may be serving or about to be:
pending, deploying, monitoring, paused and promoting. ``finish_rollback`` ends it (``rolled_back``). When a
rollback cannot finish, ``fail`` records that (``failed``); a failed deployment is still *active*: the
engine keeps retrying the rollback and fires ``finish_rollback`` from ``failed`` once it succeeds.

``completed`` and ``rolled_back`` are final: no trigger leaves them.

How the machine is used
=======================

The table ``TRANSITIONS`` below is the single source of truth; the ``transitions`` machine, the
``allowed_triggers`` answers and the error messages are all derived from it. The machine is bound to a
plain object (never an ORM row), has no automatic ``to_<state>`` triggers, and its only callback is the
in-memory bookkeeping of ``paused_from``. A callback that raised after the state changed would not undo
the change (a ``transitions`` trait), so ``Lifecycle.fire`` checks legality first and restores the state
and ``paused_from`` if anything goes wrong. An illegal trigger raises ``IllegalTransition`` and changes
nothing. Persisting the new state, and the event that explains it, is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transitions import EventData, Machine

from canaryd.domain.types import FINISHED_STATES, State


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the transition table: `trigger` moves any of `sources` to `dest`.

    `dest` None means "back to the state the deployment was paused from" (only `resume`).
    """

    trigger: str
    sources: tuple[State, ...]
    dest: State | None


#: The lifecycle, as data. Order of the sources is the order used in messages.
TRANSITIONS: tuple[Rule, ...] = (
    Rule("start", (State.PENDING,), State.DEPLOYING),
    Rule("canary_ready", (State.DEPLOYING,), State.MONITORING),
    Rule("await_approval", (State.MONITORING,), State.WAITING_FOR_APPROVAL),
    Rule("approve", (State.WAITING_FOR_APPROVAL,), State.MONITORING),
    Rule("pause", (State.DEPLOYING, State.MONITORING), State.PAUSED),
    Rule("resume", (State.PAUSED,), None),
    Rule("promote", (State.MONITORING, State.WAITING_FOR_APPROVAL, State.PAUSED), State.PROMOTING),
    Rule("complete", (State.PROMOTING,), State.COMPLETED),
    Rule(
        "rollback",
        (
            State.PENDING,
            State.DEPLOYING,
            State.MONITORING,
            State.WAITING_FOR_APPROVAL,
            State.PAUSED,
            State.PROMOTING,
        ),
        State.ROLLING_BACK,
    ),
    Rule("finish_rollback", (State.ROLLING_BACK, State.FAILED), State.ROLLED_BACK),
    Rule("fail", (State.ROLLING_BACK,), State.FAILED),
)

_RULES: dict[str, Rule] = {rule.trigger: rule for rule in TRANSITIONS}

#: Every trigger name, in table order.
TRIGGERS: tuple[str, ...] = tuple(_RULES)

#: States a pause can come from, hence the states `resume` can return to.
PAUSABLE_STATES: tuple[State, ...] = _RULES["pause"].sources

#: Deployments in these states still need work (a failed one keeps retrying its rollback).
ACTIVE_STATES: frozenset[State] = frozenset(State) - FINISHED_STATES

# Words for messages: "cannot <verb> a deployment that <is ...>; <trigger> is possible while <...>".
_VERBS = {
    "start": "start",
    "canary_ready": "finish deploying the canary of",
    "await_approval": "wait for approval of",
    "approve": "approve the next stage of",
    "pause": "pause",
    "resume": "resume",
    "promote": "promote",
    "complete": "complete",
    "rollback": "roll back",
    "finish_rollback": "finish rolling back",
    "fail": "fail the rollback of",
}
_IS = {
    State.PENDING: "is pending",
    State.DEPLOYING: "is deploying",
    State.MONITORING: "is monitoring",
    State.WAITING_FOR_APPROVAL: "is waiting for approval",
    State.PAUSED: "is paused",
    State.PROMOTING: "is promoting",
    State.COMPLETED: "has completed",
    State.ROLLING_BACK: "is rolling back",
    State.ROLLED_BACK: "has been rolled back",
    State.FAILED: "has failed to roll back",
}
_WHILE = {
    State.PENDING: "pending",
    State.DEPLOYING: "deploying",
    State.MONITORING: "monitoring",
    State.WAITING_FOR_APPROVAL: "waiting for approval",
    State.PAUSED: "paused",
    State.PROMOTING: "promoting",
    State.ROLLING_BACK: "rolling back",
    State.FAILED: "failed",
}


class IllegalTransition(Exception):  # noqa: N818 - the name says what happened, like h11's errors
    """A trigger fired in a state that does not allow it; the lifecycle was left unchanged."""

    def __init__(self, trigger: str, state: State, message: str) -> None:
        super().__init__(message)
        self.trigger = trigger
        self.state = state
        self.message = message


def _rule(trigger: str) -> Rule:
    try:
        return _RULES[trigger]
    except KeyError:
        raise ValueError(f"unknown trigger {trigger!r}; known triggers: {', '.join(TRIGGERS)}") from None


def _or_list(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


_ALLOWED: dict[State, frozenset[str]] = {
    state: frozenset(rule.trigger for rule in TRANSITIONS if state in rule.sources) for state in State
}


def allowed_triggers(state: State) -> frozenset[str]:
    """Triggers that may fire in `state` (for a paused deployment, `resume` included)."""
    return _ALLOWED[state]


def _resumes_to(target: State) -> Any:
    # A condition of the machine: `resume` has one machine transition per state it can return to.
    def condition(event: EventData) -> bool:
        model = event.model
        return isinstance(model, Lifecycle) and model.paused_from is target

    return condition


def _machine_transitions() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for rule in TRANSITIONS:
        if rule.dest is None:
            for target in PAUSABLE_STATES:
                rows.append(
                    {
                        "trigger": rule.trigger,
                        "source": list(rule.sources),
                        "dest": target,
                        "conditions": [_resumes_to(target)],
                    }
                )
        else:
            rows.append({"trigger": rule.trigger, "source": list(rule.sources), "dest": rule.dest})
    return rows


class Lifecycle:
    """The state of one deployment, driven by named triggers. Holds no I/O and no clock."""

    state: State
    paused_from: State | None

    def __init__(self, state: State, paused_from: State | None = None) -> None:
        state = State(state)
        if state is State.PAUSED:
            if paused_from not in PAUSABLE_STATES:
                raise ValueError(
                    f"a paused deployment must remember the state it was paused from "
                    f"(deploying or monitoring), not {paused_from!r}"
                )
            paused_from = State(paused_from)
        elif paused_from is not None:
            raise ValueError(f"only a paused deployment has paused_from (state {state.value})")
        self.state = state
        self.paused_from = paused_from
        # Built on the first fire(): most Lifecycles only answer can()/why_not() (every status read, every
        # tick's decision), and building the machine costs ~0.5 ms.
        self._machine: Machine | None = None

    def _bind_machine(self) -> None:
        self._machine = Machine(
            model=self,
            states=State,
            initial=self.state,
            transitions=_machine_transitions(),
            auto_transitions=False,
            ignore_invalid_triggers=False,
            send_event=True,
            before_state_change=[self._track_pause],
        )

    def __repr__(self) -> str:
        return f"Lifecycle(state={self.state!r}, paused_from={self.paused_from!r})"

    def _track_pause(self, event: EventData) -> None:
        # In-memory only, so it cannot fail half way; entering `paused` remembers where from.
        transition = event.transition
        assert transition is not None and transition.dest is not None
        dest = State[transition.dest]
        self.paused_from = State[transition.source] if dest is State.PAUSED else None

    def why_not(self, trigger: str) -> str | None:
        """None if `trigger` may fire now, else a sentence saying why it may not."""
        rule = _rule(trigger)
        if self.state in rule.sources:
            return None
        where = _or_list([_WHILE[s] for s in rule.sources])
        return (
            f"cannot {_VERBS[trigger]} a deployment that {_IS[self.state]}; "
            f"{trigger} is possible while {where}"
        )

    def can(self, trigger: str) -> bool:
        """Whether `trigger` may fire now."""
        return self.why_not(trigger) is None

    def allowed(self) -> frozenset[str]:
        """Triggers that may fire now."""
        return allowed_triggers(self.state)

    def fire(self, trigger: str) -> State:
        """Fires `trigger` and returns the new state; an illegal trigger raises and changes nothing."""
        reason = self.why_not(trigger)
        if reason is not None:
            raise IllegalTransition(trigger, self.state, reason)
        if self._machine is None:
            self._bind_machine()
        before = (self.state, self.paused_from)
        try:
            moved = self.trigger(trigger)
        except BaseException:
            self.state, self.paused_from = before
            raise
        if not moved:  # a condition refused (cannot happen while the invariants hold): stay put
            self.state, self.paused_from = before
            raise IllegalTransition(trigger, self.state, f"cannot {_VERBS[trigger]} this deployment now")
        return self.state

    # Bound by the machine; declared so that type checkers know it exists.
    trigger: Any


__all__ = [
    "ACTIVE_STATES",
    "PAUSABLE_STATES",
    "TRANSITIONS",
    "TRIGGERS",
    "IllegalTransition",
    "Lifecycle",
    "Rule",
    "allowed_triggers",
]
