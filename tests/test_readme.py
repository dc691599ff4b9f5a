"""The README is the user's guide: its Quickstart and variable table must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from rtml_cli.commands import COMMANDS
from rtml_core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def quickstart_commands() -> list[str]:
    section = re.search(r"^## Quickstart\b(.*?)(?=^## )", README, re.M | re.S).group(1)
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_quickstart_is_two_commands_and_ci_runs_the_second():
    commands = quickstart_commands()
    assert commands == ["make demo", "make test"]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_every_setting_is_documented_as_its_environment_variable():
    missing = [f"RTML_{name.upper()}" for name in Settings.model_fields
               if f"`RTML_{name.upper()}`" not in README]
    assert not missing, f"README does not document {missing}"


def test_every_command_is_in_the_readme():
    missing = [name for name in COMMANDS if f"rtml {name}" not in README]
    assert not missing, f"README shows no example of {missing}"
