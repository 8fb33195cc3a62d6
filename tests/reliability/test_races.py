"""Operators racing each other and the engine: promote, rollback and pause sent at the same moment, just as
the stage's time is up and a worker advances it by itself (production mode, PostgreSQL, two workers).
Each trial has one consistent outcome, and the history says who did what, in an order the state machine
allows."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime
from pathlib import Path

from tests.fixtures.stack import LoadGenerator, make_stack

from .cluster import check_history

TRIALS = 6
CONFIG = {
    "stages": [50, 100],
    "stage_duration": 1,
    "health_check_interval": 1,
    "min_requests": 1,
    "judge": "threshold",
    "latency_min_difference_ms": 5000,  # latency is noise on a machine the suite loads; not tested here
}
ACTIONS = ("promote", "rollback", "pause")


async def test_simultaneous_actions_have_one_outcome(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    """Trials of promote+rollback+pause at the stage's end: each accepted action is recorded with its actor,
    the rest get 409, and the final state is the one the last accepted action leads to."""
    async with make_stack(tmp_path, pg_url, redis_url, workers=2, servers=2) as s:
        await s.register("v1")
        tokens = {}
        for action in ACTIONS:
            r = await s.api.post("/tokens", json={"name": f"op-{action}", "scope": "operate"})
            assert r.status_code == 201, r.text
            tokens[action] = r.json()["token"]
        load = LoadGenerator(s.proxy_url, rate=30).start()
        outcomes = []
        current = "v1"
        for trial in range(TRIALS):
            version = f"v{trial + 2}"
            dep = (await s.deploy(version, CONFIG)).json()
            await s.wait(dep["id"], {"monitoring"})
            st = await s.status(dep["id"])
            ends = datetime.fromisoformat(st["next_stage_at"]).timestamp()
            await asyncio.sleep(max(0.0, ends - datetime.now().astimezone().timestamp()))

            async def act(action: str, dep_id: int = dep["id"]) -> tuple[str, int]:
                r = await s.api.post(
                    f"/deployments/{dep_id}/{action}", headers={"Authorization": f"Bearer {tokens[action]}"}
                )
                assert r.status_code in (202, 409), r.text
                return action, r.status_code

            order = random.sample(ACTIONS, len(ACTIONS))  # who reaches the API first varies
            answers = dict(await asyncio.gather(*(act(a) for a in order)))
            accepted = {a for a, code in answers.items() if code == 202}
            assert accepted, answers
            events = await s.events(dep["id"])
            by_actor = {e["actor"]: e for e in events if e["actor"].startswith("token:op-")}
            assert {a.split("op-")[1] for a in by_actor} == accepted, (answers, by_actor)
            # Finish the trial: a pause still holds, so roll back from there.
            st = await s.status(dep["id"])
            if st["canary_status"] == "paused":
                assert (await s.api.post(f"/deployments/{dep['id']}/rollback")).status_code == 202
            await s.wait(dep["id"])
            st = await s.status(dep["id"])
            events = await s.events(dep["id"])
            check_history(events)
            ops = [e for e in events if e["actor"] != "canaryd" and e["kind"] != "deployment_created"]
            last_operator = ops[-1]["kind"]
            expected = "completed" if last_operator == "promoted" else "rolled_back"
            assert st["canary_status"] == expected, (answers, [(e["kind"], e["actor"]) for e in events])
            if "rollback" in accepted:
                assert st["canary_status"] == "rolled_back", answers
            current = version if expected == "completed" else current
            assert await s.fleet_versions() == [current] * 2
            outcomes.append((sorted(accepted), st["canary_status"]))
        await load.stop()
        print(f"\nraces: {outcomes}")
