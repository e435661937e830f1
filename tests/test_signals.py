"""SIGINT and SIGTERM at any moment: exit 130, one line, and where a run folder exists, the way to go on.

The child processes are signalled when they report being ready for it (a handler installed, an epoch
written), never after a sleep; their limits are generous (30 min), as a loaded machine needs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from msmix_cli.cli import app

runner = CliRunner()
LIMIT = 1800  # seconds: only ever reached by a hung process
TINY = ["train", "--backbone", "lmf", "--mix", "none", "--samples", "40", "--max-epochs", "2", "--seed", "4",
        "--set", "train.threads=1", "--format", "json"]


def msmix(args: list[object], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "msmix_cli", *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_until(ready: Callable[[], bool], process: subprocess.Popen) -> None:
    """Poll `ready` until it holds or the process has ended."""
    deadline = time.monotonic() + LIMIT
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process `pid` has a handler for `sig` (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(mask >> (sig - 1) & 1)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in stderr, stderr
    return lines[0]


def error_line(stderr: str) -> str:
    """The one error, after whatever progress a run printed before it."""
    errors = [line for line in stderr.splitlines() if line.startswith(("error:", "internal error:"))]
    assert len(errors) == 1 and stderr.strip().endswith(errors[0]) and "Traceback" not in stderr, stderr
    return errors[0]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_command_starts_is_exit_130_and_one_line(tmp_path: Path, sig: signal.Signals) -> None:
    """Sent as soon as msmix handles SIGTERM: before the fix, never during start-up (so the dry run ended 0)."""
    process = msmix(["train", "--dry-run", "--backbone", "mult"], tmp_path)
    wait_until(lambda: catches(process.pid, signal.SIGTERM), process)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=LIMIT)
    assert process.returncode == 130, stderr
    assert one_line(stderr) == f"error: stopped by {sig.name}"


SIGNALLED_HERE = "os.kill(os.getpid(), signal.SIGTERM)\nwhile True: pass"  # the handler runs inside the loop


def run_signalled(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`code` after signals.install(), with a module `signalled` on the path that signals itself while imported."""
    # Its exec is how a dataclass makes its __init__: a KeyboardInterrupt escaping it made CPython 3.11 kill itself
    # with SIGINT at exit (-2), whatever exit code the program chose.
    (tmp_path / "signalled.py").write_text(f"import os, signal\nexec({SIGNALLED_HERE!r})\n")
    script = f"import os, signal, sys\nfrom msmix_cli import signals\nsignals.install()\nsys.path.insert(0, {str(tmp_path)!r})\n{code}"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=LIMIT)


@pytest.mark.parametrize("code", [
    SIGNALLED_HERE,  # start-up: Typer would have made a KeyboardInterrupt a silent exit 130
    "import signalled",
    "with signals.raising():\n    import signalled",  # a command's lazy import: it could be left half-made
])
def test_a_signal_outside_a_command_or_inside_an_import_ends_at_once_with_one_line(tmp_path: Path, code: str) -> None:
    ended = run_signalled(code, tmp_path)
    assert (ended.returncode, ended.stderr) == (130, "error: stopped by SIGTERM\n")


def test_a_signal_inside_an_import_of_a_command_stops_its_workers_too(tmp_path: Path) -> None:
    worker = "subprocess.Popen([sys.executable, '-c', 'while True: pass'])"
    ended = run_signalled(f"import subprocess\nprint({worker}.pid, flush=True)\nwith signals.raising():\n    import signalled", tmp_path)
    assert (ended.returncode, ended.stderr) == (130, "error: stopped by SIGTERM\n")
    pid = int(ended.stdout)
    deadline = time.monotonic() + LIMIT
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(pid)


def test_a_signal_inside_a_command_raises_keyboard_interrupt_for_it_to_clean_up(tmp_path: Path) -> None:
    code = "with signals.raising():\n    try:\n        " + SIGNALLED_HERE.replace("\n", "\n        ") + "\n    except KeyboardInterrupt:\n        print(signals.name())"
    ended = run_signalled(code, tmp_path)
    assert (ended.returncode, ended.stdout, ended.stderr) == (0, "SIGTERM\n", "")


def test_a_signal_at_the_test_evaluation_leaves_an_interrupted_run_that_resumes(tmp_path: Path, monkeypatch) -> None:
    from msmix_cli.training import loop

    real_evaluate = loop.evaluate

    def signalled_at_test(setup, split_name, *args, **kwargs):
        if split_name == "test":
            raise KeyboardInterrupt  # what SIGINT raises after the last epoch
        return real_evaluate(setup, split_name, *args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", signalled_at_test)
    run = tmp_path / "runs" / "r"
    result = runner.invoke(app, [*TINY, "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "runs"), "--name", "r"])
    assert result.exit_code == 130
    assert f"resume with: msmix train --resume {run}" in error_line(result.stderr)
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(loop, "evaluate", real_evaluate)
    result = runner.invoke(app, ["train", "--resume", str(run), "--data-root", str(tmp_path / "data")])
    assert result.exit_code == 0, result.stderr
    assert json.loads((run / "run.json").read_text())["status"] == "complete"


def test_a_signal_before_the_recipe_is_written_says_to_run_the_same_command(tmp_path: Path, monkeypatch) -> None:
    from msmix_cli.training import loop

    def signalled(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "build", signalled)
    args = [*TINY, "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "runs"), "--name", "r"]
    result = runner.invoke(app, args)
    assert result.exit_code == 130
    assert "run the same command again" in error_line(result.stderr)
    assert not any((tmp_path / "runs" / "r").glob("*"))  # left empty, or removed with its lock
    monkeypatch.undo()
    assert runner.invoke(app, args).exit_code == 0


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def is_resource_tracker(pid: int) -> bool:
    """multiprocessing's resource tracker: not a worker; it exits on its own once its parent's pipe closes."""
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_sigterm_to_a_parallel_ablation_stops_its_workers_and_a_rerun_finishes(tmp_path: Path) -> None:
    args = ["ablate", "--dataset", "synth", "--backbone", "lmf", "--samples", "120", "--max-epochs", "60", "--seeds", "1",
            "--drop", "sig", "--jobs", "2", "--set", "train.early_stop=1000", "--set", "train.threads=1",
            "--data-root", tmp_path / "data", "--out", tmp_path / "abl"]
    process = msmix(args, tmp_path)
    wait_until(lambda: any((tmp_path / "abl").glob("*/last.pt")), process)
    workers = [pid for pid in children(process.pid) if not is_resource_tracker(pid)]
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=LIMIT)
    assert process.returncode == 130, stderr
    assert "rerun the same command" in error_line(stderr)
    assert workers and not any(alive(pid) for pid in workers)
    statuses = {json.loads(p.read_text())["status"] for p in (tmp_path / "abl").glob("*/run.json")}
    assert statuses <= {"interrupted", "complete"} and "interrupted" in statuses

    again = msmix(args, tmp_path)
    _, stderr = again.communicate(timeout=LIMIT)
    assert again.returncode == 0, stderr
    infos = [json.loads(p.read_text()) for p in (tmp_path / "abl").glob("*/run.json")]
    assert len(infos) == 2 and all(info["status"] == "complete" for info in infos)
    assert any(info.get("resumed_from_epoch", 0) >= 1 for info in infos)
