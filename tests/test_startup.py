"""Start-up: `--help` and a mistyped command line answer without loading torch, scikit-learn or NumPy.

Measured by what a fresh interpreter has imported, not by a clock: the machine's load must not decide a test.
"""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "sklearn", "scipy", "numpy", "h5py", "matplotlib")

PROBE = """
import json, sys
from msmix_cli.cli import app
try:
    app(sys.argv[1:], prog_name="msmix")
except SystemExit as done:
    code = done.code
print(json.dumps({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)}), file=sys.stderr)
""" % (HEAVY,)


def run_cli(*args: str) -> tuple[int, list[str], str]:
    """Exit code, the heavy modules the command imported, and its stderr (the probe's line left out)."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=1800)
    *lines, last = done.stderr.strip().splitlines()
    report = json.loads(last)
    return report["code"], report["heavy"], "\n".join(lines)


COMMANDS = ("train", "evaluate", "ablate", "download", "preprocess", "ls", "env", "clean", "plot", "recipe",
            "recipe show", "recipe cp", "recipe validate")


@pytest.mark.parametrize("args", [("--help",), ("--version",), *((*command.split(), "--help") for command in COMMANDS)])
def test_help_imports_nothing_heavy(args):
    code, heavy, _ = run_cli(*args)
    assert code in (0, None) and heavy == []


@pytest.mark.parametrize("args, message", [
    (("train", "--max-epochs", "many"), "Invalid value for '--max-epochs'"),
    (("train", "--drop", "sas"), "unknown MS-Mix part 'sas'"),
    (("train", "--resume", "runs/x", "--seed", "3"), "drop --seed"),
    (("evaluate",), "Missing argument"),
    (("ablate", "--jobs", "two"), "Invalid value for '--jobs'"),
])
def test_a_bad_command_line_is_refused_before_torch_loads(args, message):
    code, heavy, stderr = run_cli(*args)
    assert code == 2 and message in stderr
    assert "torch" not in heavy and "sklearn" not in heavy
