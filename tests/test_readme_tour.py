"""README's tour, line by line: every command of its first block runs on `synth` as written, with tiny sizes added."""

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from msmix_cli.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
# Added to the tour's own options (a repeated option takes its last value), so that the tour runs in a minute.
TINY = {
    "train": ["--samples", "80", "--max-epochs", "1"],
    "ablate": ["--samples", "80", "--max-epochs", "1", "--seeds", "1111"],
}


def tour_commands() -> list[str]:
    """The `msmix ...` lines of the first ```bash block after "## A tour", comments dropped."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## A tour\n.*?```bash\n(.*?)```", text, re.S)
    assert block, "README has no tour"
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def expand(arguments: list[str], folder: Path) -> list[str]:
    """What the shell does with the tour's only glob, `runs/*`."""
    expanded: list[str] = []
    for argument in arguments:
        expanded += sorted(str(p.relative_to(folder)) for p in folder.glob(argument)) if "*" in argument else [argument]
    return expanded


def test_the_tour_is_long_enough_to_be_a_tour():
    commands = tour_commands()
    assert len(commands) >= 8 and all(command.startswith("msmix ") for command in commands)


@pytest.mark.slow
def test_every_line_of_the_tour_runs_on_synth(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MSMIX_DATA_ROOT", str(tmp_path / "data"))
    runner = CliRunner()
    for command in tour_commands():
        arguments = expand(shlex.split(command)[1:], tmp_path)
        extra = [] if "--dry-run" in arguments else TINY.get(arguments[0], [])
        result = runner.invoke(app, [*arguments, *extra])
        assert result.exit_code == 0, f"{command}\n{result.output}"
