"""Validation against the public schemas that check-jsonschema ships (the Compose specification, GitHub
workflows, GitLab CI): offline, with the same tool a user or a pre-commit hook would run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def check_schema(builtin: str, path: Path) -> subprocess.CompletedProcess[str]:
    """Runs `check-jsonschema --builtin-schema vendor.<builtin> <path>`."""
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", f"vendor.{builtin}", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
