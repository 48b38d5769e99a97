"""The command group itself: its commands, `--help`, the exit codes and what docs/CLI.md says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

from click.testing import CliRunner

from orchestrator.cli import COMMANDS, main
from orchestrator.cli.exit_codes import ExitCode
from orchestrator.cli.tiny_model_command import FAMILIES
from tests.support.vlmq_cli import run_vlmq
from worker.tiny.tokenizer import TinyTokenizerFamily

REPO = Path(__file__).resolve().parents[3]


def test_help_lists_every_command_and_each_has_its_own_help() -> None:
    runner = CliRunner()
    top = runner.invoke(main, ["--help"], prog_name="vlmq")
    assert top.exit_code == 0
    listed = re.findall(r"^  (\S+)  +\S", top.output.split("Commands:")[1], re.MULTILINE)
    assert listed == list(COMMANDS)
    for name in COMMANDS:
        own = runner.invoke(main, [name, "--help"], prog_name="vlmq")
        assert own.exit_code == 0 and own.output.startswith(f"Usage: vlmq {name} ")


def test_python_m_runs_the_same_command() -> None:
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.startswith("Usage: vlmq ")


def test_the_families_offered_are_the_tiny_tokenizer_families() -> None:
    assert get_args(TinyTokenizerFamily) == FAMILIES


def test_serve_refuses_a_missing_model_directory_before_starting_anything(
    tmp_path: Path,
) -> None:
    done = run_vlmq("serve", "--model", str(tmp_path / "nowhere"), "--redis-url",
                    "redis://127.0.0.1:1/0")
    assert done.returncode == ExitCode.USAGE
    assert "does not exist" in done.stderr


def test_the_exit_codes_are_distinct_and_docs_cli_tables_each() -> None:
    assert len({int(code) for code in ExitCode}) == len(ExitCode)
    assert int(ExitCode.USAGE) == 2  # click's own code for usage errors
    doc = (REPO / "docs" / "CLI.md").read_text()
    table = re.findall(r"^\| `(\d+)` \| `([A-Z_]+)` \|", doc, re.MULTILINE)
    assert table == [(str(int(code)), code.name) for code in ExitCode]
