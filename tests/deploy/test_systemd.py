"""deploy/systemd units checked by systemd's own `systemd-analyze verify` (and their sandboxing scored by
`systemd-analyze security --offline`), with ExecStart pointed at this checkout's canaryd."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.deploy.schemas import REPO

UNITS = REPO / "deploy" / "systemd"
INSTALLED_CANARYD = "/opt/canaryd/.venv/bin/canaryd"
#: systemd's own scale: below 2.0 is "OK", up to 5.0 "MEDIUM". At the time of writing canaryd.service scores
#: 1.5 and canaryd-worker@.service 1.9.
MAX_EXPOSURE = 2.0


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail(
            "systemd-analyze is not installed: apt-get install -y systemd (make setup does this)",
            pytrace=False,
        )
    return found


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The units as installed, but running this checkout's canaryd (verify checks that ExecStart exists)."""
    canaryd = Path(sys.executable).with_name("canaryd")
    assert canaryd.exists(), canaryd
    for unit in UNITS.glob("*.service"):
        text = unit.read_text()
        assert INSTALLED_CANARYD in text, f"{unit.name} no longer runs {INSTALLED_CANARYD}"
        (tmp_path / unit.name).write_text(text.replace(INSTALLED_CANARYD, str(canaryd)))
    # verify checks template units through an instance of them.
    shutil.copy(tmp_path / "canaryd-worker@.service", tmp_path / "canaryd-worker@1.service")
    return tmp_path


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("unit", ["canaryd.service", "canaryd-worker@1.service"])
def test_unit_verifies_without_a_warning(units: Path, unit: str) -> None:
    result = verify(units / unit)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_verify_reports_a_misspelt_directive(units: Path) -> None:
    """The check can fail: an unknown key is reported (as a warning, which the test above refuses)."""
    broken = units / "broken.service"
    broken.write_text((units / "canaryd.service").read_text().replace("RestartSec=", "RestartSecs="))
    assert "Unknown key" in verify(broken).stderr


@pytest.mark.parametrize("unit", ["canaryd.service", "canaryd-worker@1.service"])
def test_unit_is_sandboxed(units: Path, unit: str) -> None:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(units / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout + result.stderr)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, found.group(0)
