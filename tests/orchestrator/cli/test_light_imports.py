"""The commands that only talk to Redis start fast: they import no torch, Ray or transformers.

Each case runs the click group in a fresh interpreter (`main.main(args, standalone_mode=False)`)
and reports which of those libraries ended up in `sys.modules`. The control case imports the
demo and transformers first, to show that the report does see them when they are there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.cli.exit_codes import ExitCode
from orchestrator.private_redis import PrivateRedisServer

REPO = Path(__file__).resolve().parents[3]
HEAVY = ("torch", "ray", "transformers")

RUN_AND_REPORT = textwrap.dedent(
    """
    import contextlib, io, json, sys
    args = json.loads(sys.argv[1])
    if sys.argv[2] == "control":
        import orchestrator.demo, transformers
    from orchestrator.cli import main
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main.main(args, prog_name="vlmq", standalone_mode=False)
    heavy = sorted(name for name in sys.argv[3:] if name in sys.modules)
    print(json.dumps({"code": code, "heavy": heavy, "out": out.getvalue()}))
    """
)


def run_in_fresh_python(args: list[str], *, control: bool = False) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_REPORT, json.dumps(args),
         "control" if control else "plain", *HEAVY],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=True,
    )
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize(
    "args", [["--help"], ["status", "--help"], ["serve", "--help"], ["make-tiny-model", "--help"]]
)
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    report = run_in_fresh_python(args)
    assert report["code"] == 0
    assert "Usage: vlmq" in str(report["out"])
    assert report["heavy"] == []


SAMPLE = Path(__file__).resolve().parents[3] / "examples" / "batch" / "requests.jsonl"


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["status"], None),
        (["status", "--json"], None),
        (["status", "nope"], ExitCode.NOT_FOUND),
        # Its chat lines need a template no server has published: refused, after reading it.
        (["submit", str(SAMPLE)], ExitCode.FAILED),
        (["results", "nope", "-o", "/dev/null"], ExitCode.NOT_FOUND),
        (["cancel", "nope"], ExitCode.NOT_FOUND),
    ],
)
def test_redis_only_commands_import_nothing_heavy(
    redis_server: PrivateRedisServer, args: list[str], code: ExitCode | None
) -> None:
    report = run_in_fresh_python([*args, "--redis-url", redis_server.url])
    assert report["code"] == code  # None: the command returned normally
    assert report["heavy"] == []


def test_the_report_sees_heavy_imports_where_they_are() -> None:
    report = run_in_fresh_python(["--help"], control=True)
    assert report["heavy"] == sorted(HEAVY)
