"""Deployment settings kept per application, and how a deployment's own settings override them.

An application may carry `deployment_defaults`: any subset of the deployment settings (CanaryConfig). A
deployment's `config` overrides them **field by field, at the top level**: a field the deployment sets wins
whole, a field it leaves out comes from the application, and a field neither sets has CanaryConfig's
default. Nested objects (`prometheus`) are not merged: a deployment that sets `prometheus` replaces the
application's whole object, so what runs is always one object somebody wrote, never a blend of two.

Both parts are read with `CanaryConfigOverrides`: every field's own rules apply, the rules that relate two
fields (approval gates name later stages, the check interval fits the stage, ...) do not, since the other
field may come from the other part. Those are checked on the merged result (`effective_config`), whose
problems say where each offending value came from. The effective settings are stored on the deployment at
creation: changing an application's defaults never changes a deployment already started.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ValidationError

from canaryd.domain.config import CanaryConfig

#: Where an effective setting came from.
Source = Literal["deployment", "application", "default"]

#: The location of a problem in the application's defaults, as the API reports it.
DEFAULTS_LOC: tuple[str, ...] = ("application", "deployment_defaults")


class CanaryConfigOverrides(CanaryConfig):
    """Any subset of the deployment settings (CanaryConfig). Each field is checked by its own rules; rules
    between fields are checked once the deployment's settings are merged with the application's defaults.
    Fields left out come from the application's `deployment_defaults`, then from CanaryConfig's defaults."""

    checks_relations: ClassVar[bool] = False


def set_fields(part: BaseModel) -> dict[str, Any]:
    """The top-level fields a part sets, with their values (a nested object whole, with its defaults)."""
    dumped = part.model_dump()
    return {name: dumped[name] for name in part.model_fields_set if name in dumped}


def config_sources(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Source]:
    """Where each setting of the effective configuration comes from."""
    sources: dict[str, Source] = {}
    for name in CanaryConfig.model_fields:
        if name in overrides:
            sources[name] = "deployment"
        elif name in defaults:
            sources[name] = "application"
        else:
            sources[name] = "default"
    return sources


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem of the effective settings: where it is (`loc`) and what it is."""

    loc: tuple[str | int, ...]
    msg: str


def effective_config(
    defaults: Mapping[str, Any], overrides: Mapping[str, Any], min_stage_duration: int
) -> tuple[CanaryConfig | None, list[ConfigProblem]]:
    """The deployment's effective settings (the application's defaults overridden field by field by the
    deployment's own), or every problem of them: a field's problem is located where its value came from
    (`body.config.<field>` or `application.deployment_defaults.<field>`); a problem between fields is
    located at `body.config` and names the fields the application's defaults supplied."""
    merged = {**defaults, **overrides}
    try:
        config = CanaryConfig.model_validate(merged, context={"min_stage_duration": min_stage_duration})
    except ValidationError as exc:
        return None, [_locate(e, defaults, overrides) for e in exc.errors()]
    return config, []


def defaults_problems(defaults: Mapping[str, Any], min_stage_duration: int) -> list[ConfigProblem]:
    """Every problem of an application's defaults, checked as a whole deployment configuration (the
    defaults over CanaryConfig's defaults): a deployment that sets nothing must be able to start."""
    try:
        CanaryConfig.model_validate(dict(defaults), context={"min_stage_duration": min_stage_duration})
    except ValidationError as exc:
        return [
            ConfigProblem(
                ("body", "deployment_defaults", *e["loc"]), str(e["msg"]).removeprefix("Value error, ")
            )
            for e in exc.errors()
        ]
    return []


def _locate(error: Any, defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> ConfigProblem:
    loc = tuple(error["loc"])
    msg = str(error["msg"]).removeprefix("Value error, ")
    field = loc[0] if loc else None
    if field is not None and field not in overrides and field in defaults:
        return ConfigProblem((*DEFAULTS_LOC, *loc), f"{msg} (from the application's deployment_defaults)")
    if field is None:
        inherited = sorted(k for k in defaults if k not in overrides)
        if inherited:
            msg += f" (with {', '.join(inherited)} from the application's deployment_defaults)"
    return ConfigProblem(("body", "config", *loc), msg)


def source_loc(field: str, overrides: Mapping[str, Any]) -> tuple[str, ...]:
    """Where a field of the effective settings came from, as a problem location."""
    return ("body", "config", field) if field in overrides else (*DEFAULTS_LOC, field)


__all__ = [
    "DEFAULTS_LOC",
    "CanaryConfigOverrides",
    "ConfigProblem",
    "Source",
    "config_sources",
    "defaults_problems",
    "effective_config",
    "set_fields",
    "source_loc",
]
