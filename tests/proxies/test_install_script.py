"""The one-command install script (proxies/files.py), run by /bin/sh on a scratch directory."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from canaryd.proxies.files import failed_step, inlinable, install_script, put_back_script
from canaryd.transports.base import CommandResult


def run(script: str) -> CommandResult:
    proc = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=30)
    return CommandResult(proc.returncode, proc.stdout, proc.stderr)


def test_inlinable() -> None:
    assert inlinable(None)
    assert inlinable(b"server a;\n")
    assert not inlinable(b"no newline at the end")
    assert not inlinable(b"a\x00b\n")
    assert not inlinable(b"\xff\n")
    assert not inlinable(b"x" * 70_000 + b"\n")


def test_refuses_the_delimiter_and_odd_tokens() -> None:
    with pytest.raises(ValueError, match="delimiter"):
        install_script("/x/a.conf", b"CANARYD_EOF_ab12\n", None, "true", "ab12")
    with pytest.raises(ValueError, match="token"):
        install_script("/x/a.conf", b"a\n", None, "true", "a; rm")


def test_quotes_and_dollars_arrive_as_written(tmp_path: Path) -> None:
    """The file's bytes go through untouched (a quoted here-document: no expansion), and so do the paths."""
    live = tmp_path / "it's $HOME.conf"
    data = b'log_format x \'{"a":"$msec"}\';\n`uname` \\n $(true)\n'
    result = run(install_script(str(live), data, "true", "true", "ab12"))
    assert failed_step(result) is None
    assert live.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]


@pytest.mark.parametrize("step", ["test", "reload"])
def test_failed_step_puts_back(tmp_path: Path, step: str) -> None:
    live = tmp_path / "a.conf"
    live.write_bytes(b"old\n")
    test, reload = ("exit 7", "true") if step == "test" else ("true", "exit 7")
    result = run(install_script(str(live), b"new\n", test, reload, "ab12"))
    assert (failed_step(result), result.exit_status) == (step, 7)
    assert live.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.conf"]


def test_first_file_refused_is_removed(tmp_path: Path) -> None:
    live = tmp_path / "a.conf"
    result = run(install_script(str(live), b"new\n", "exit 1", "true", "ab12"))
    assert failed_step(result) == "test"
    assert list(tmp_path.iterdir()) == []


def test_an_exit_in_a_command_cannot_skip_the_put_back(tmp_path: Path) -> None:
    live = tmp_path / "a.conf"
    live.write_bytes(b"old\n")
    result = run(install_script(str(live), b"new\n", "echo bad >&2; exit 0; true", "exit 3", "ab12"))
    assert failed_step(result) == "reload"
    assert live.read_bytes() == b"old\n"


def test_put_back_after_an_unknown_outcome(tmp_path: Path) -> None:
    """Killed after the new file was renamed in: the put-back restores the previous file (or removes the new
    one when there was none); after a finished script it touches nothing."""
    live = tmp_path / "a.conf"
    live.write_bytes(b"old\n")
    # The script up to its test, which "hangs" (stops the script here, as a kill would).
    partial = install_script(str(live), b"new\n", "kill -9 $$", "true", "ab12").replace("( eval", "eval", 1)
    run(partial)
    assert live.read_bytes() == b"new\n"
    run(put_back_script(str(live), "ab12"))
    assert live.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.conf"]

    live.unlink()
    run(partial)
    assert live.read_bytes() == b"new\n"
    run(put_back_script(str(live), "ab12"))
    assert list(tmp_path.iterdir()) == []

    assert failed_step(run(install_script(str(live), b"new\n", None, "true", "cd34"))) is None
    run(put_back_script(str(live), "cd34"))
    assert live.read_bytes() == b"new\n"


def test_failed_step_reads_the_marks() -> None:
    assert failed_step(CommandResult(0, "canaryd-installed\n", "")) is None
    assert failed_step(CommandResult(1, "canaryd-failed test\n", "")) == "test"
    assert failed_step(CommandResult(0, "", "")) == "unknown"
    assert failed_step(CommandResult(127, "", "sh: not found")) == "unknown"
