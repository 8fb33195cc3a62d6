"""Application defaults under a deployment's own settings: the merge, its sources, where problems are
located, and `dry_run` read as the deprecated name of `analysis`."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from canaryd.domain.config import CanaryConfig
from canaryd.domain.defaults import (
    CanaryConfigOverrides,
    config_sources,
    defaults_problems,
    effective_config,
    set_fields,
)


def test_a_part_is_checked_field_by_field_only() -> None:
    """A part may break a rule between fields (the other field comes from the other part), never a field's."""
    part = CanaryConfigOverrides.model_validate({"approve_before": [60], "metrics_source": "prometheus"})
    assert set_fields(part) == {"approve_before": [60.0], "metrics_source": "prometheus"}
    with pytest.raises(ValidationError) as err:
        CanaryConfigOverrides.model_validate({"stages": [0], "colour": 1})
    assert {e["loc"] for e in err.value.errors()} == {("stages",), ("colour",)}
    with pytest.raises(ValidationError):
        CanaryConfig.model_validate({"approve_before": [60]})


def test_nested_objects_are_replaced_whole() -> None:
    """A deployment's `prometheus` replaces the application's; its unset fields take the defaults."""
    defaults = {"prometheus": {"url": "http://a:9090/", "timeout": 2.0}, "metrics_source": "prometheus"}
    part = set_fields(CanaryConfigOverrides.model_validate({"prometheus": {"url": "http://b:9090/"}}))
    config, problems = effective_config(defaults, part, 1)
    assert problems == [] and config is not None and config.prometheus is not None
    assert (config.prometheus.url, config.prometheus.timeout) == ("http://b:9090/", 5.0)
    assert config.metrics_source == "prometheus"


@pytest.mark.parametrize(
    ("defaults", "overrides", "loc", "text"),
    [
        ({"stages": [20, 60, 100]}, {"approve_before": [60]}, None, None),
        ({"stage_duration": 30}, {"stage_duration": 5}, ("body", "config", "stage_duration"), "at least 10"),
        (
            {"stage_duration": 5},
            {},
            ("application", "deployment_defaults", "stage_duration"),
            "(from the application's deployment_defaults)",
        ),
        (
            {"stage_duration": 10},
            {"health_check_interval": 11},
            ("body", "config"),
            "(with stage_duration from the application's deployment_defaults)",
        ),
        ({}, {"approve_before": [60]}, ("body", "config"), "not a stage after the first"),
    ],
)  # fmt: skip
def test_problems_are_located_where_the_value_came_from(
    defaults: dict[str, Any], overrides: dict[str, Any], loc: tuple[str, ...] | None, text: str | None
) -> None:
    """A field's problem is where its value came from; a problem between fields names the inherited ones."""
    config, problems = effective_config(defaults, overrides, 10)
    if loc is None:
        assert config is not None and problems == []
        return
    assert config is None and [p.loc for p in problems] == [loc]
    assert text is not None and text in problems[0].msg


def test_sources_say_where_each_setting_came_from() -> None:
    """`deployment` beats `application` beats `default`, for every field of the effective settings."""
    sources = config_sources({"stages": [50, 100], "judge": "threshold"}, {"judge": "sequential"})
    assert sources["judge"] == "deployment" and sources["stages"] == "application"
    assert sources["alpha"] == "default" and set(sources) == set(CanaryConfig.model_fields)


@pytest.mark.parametrize(
    ("given", "analysis"),
    [({"dry_run": True}, "observe"), ({"dry_run": False}, "enforce"), ({"dry_run": True, "analysis": "observe"}, "observe")],
)  # fmt: skip
def test_dry_run_is_read_as_analysis(given: dict[str, Any], analysis: str) -> None:
    """The deprecated `dry_run` becomes `analysis`, in a whole configuration and in a part, and is noted."""
    for model in (CanaryConfig, CanaryConfigOverrides):
        config = model.model_validate(given)
        assert config.analysis == analysis and config.deprecated_names == ("dry_run",)
        assert "dry_run" not in config.model_dump()
    assert set_fields(CanaryConfigOverrides.model_validate(given)) == {"analysis": analysis}
    assert CanaryConfig().deprecated_names == () and not CanaryConfig().observe_only


def test_dry_run_contradicting_analysis_is_refused() -> None:
    """`dry_run: false` with `analysis: observe` is a contradiction, not a silent choice."""
    with pytest.raises(ValidationError, match="give only analysis"):
        CanaryConfig.model_validate({"dry_run": False, "analysis": "observe"})
    with pytest.raises(ValidationError, match="analysis"):
        CanaryConfig.model_validate({"dry_run": "maybe"})


def test_defaults_must_make_a_whole_configuration() -> None:
    """Defaults are checked as a deployment that sets nothing; problems are at body.deployment_defaults."""
    assert defaults_problems({"stages": [50, 100], "stage_duration": 60}, 60) == []
    found = defaults_problems({"stage_duration": 30, "approve_before": [33]}, 60)
    assert [p.loc for p in found] == [("body", "deployment_defaults", "stage_duration")]
    found = defaults_problems({"approve_before": [33]}, 60)
    assert [p.loc for p in found] == [("body", "deployment_defaults")]
