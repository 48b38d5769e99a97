"""The queue benchmark's harness without the peers installed: arguments, reports, failures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench.queue_peers import (
    Peer,
    Throughput,
    main,
    missing_venvs,
    parse_only,
    parse_report,
    peer,
    report_lines,
    rotated,
    run_peer,
)


def test_only_keeps_the_known_systems_in_their_usual_order() -> None:
    assert parse_only("bullmq, arq") == ("arq", "bullmq")
    assert parse_only("vlmq") == ("vlmq",)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--only", "arq,celery"], "argument --only: unknown system 'celery'"),
        (["--only", ","], "argument --only: no system"),
        (["--jobs", "0"], "argument --jobs: must be a whole number of at least 1, not '0'"),
        (["--repeats", "two"], "argument --repeats: must be a whole number of at least 1"),
    ],
)
def test_bad_arguments_are_refused_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_peer_venvs_print_the_setup_command_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "arq" / "bin").mkdir(parents=True)
    (tmp_path / "arq" / "bin" / "python").touch()
    assert main(["--only", "arq,bullmq"], venv_root=tmp_path) == 2
    assert capsys.readouterr().out.splitlines() == [
        f"bullmq: no venv at {tmp_path / 'bullmq'}; make the peers' venvs with: "
        "scripts/bench-peers-setup"
    ]
    assert missing_venvs([peer("arq", tmp_path), peer("bullmq", tmp_path)]) == [
        peer("bullmq", tmp_path)
    ]


def test_report_gives_jobs_per_second_and_marks_each_goal() -> None:
    results = [
        Throughput("vlmq", 20000, 5.0),  # 4,000 jobs/s
        Throughput("arq", 20000, 10.0),  # 2,000 jobs/s: vlmq is 2x, goal 1.5x
        Throughput("bullmq", 20000, 12.5),  # 1,600 jobs/s: vlmq is 2.5x, goal 3x
    ]
    assert report_lines(results) == [
        "vlmq:       4,000 jobs/s (5.00 s)",
        "arq:        2,000 jobs/s (10.00 s)",
        "BullMQ:     1,600 jobs/s (12.50 s)",
        "vlmq 4,000 jobs/s, goal >= 3,000: met",
        "vlmq / arq: 2.00x, goal >= 1.5x: met",
        "vlmq / BullMQ: 2.50x, goal >= 3x: not met",
    ]


def test_report_judges_no_goal_without_vlmq() -> None:
    assert report_lines([Throughput("arq", 1000, 2.0)]) == [
        "arq:          500 jobs/s (2.00 s)",
        "goals: not judged, vlmq did not run",
    ]


def test_each_repeat_starts_with_another_system() -> None:
    systems = ["vlmq", "arq", "bullmq"]
    assert [rotated(systems, repeat)[0] for repeat in range(4)] == [
        "vlmq", "arq", "bullmq", "vlmq"
    ]


def test_a_submitter_report_must_be_about_this_run() -> None:
    line = json.dumps({"system": "arq", "jobs": 100, "seconds": 0.25})
    assert parse_report(f"warming up\n{line}\n", "arq", 100) == 0.25
    with pytest.raises(RuntimeError, match="not 200 jobs"):
        parse_report(line, "arq", 200)
    with pytest.raises(RuntimeError, match="bullmq submitter reported"):
        parse_report(line, "bullmq", 100)


def test_a_worker_that_dies_before_ready_fails_the_run_with_its_error(tmp_path: Path) -> None:
    venv = tmp_path / "venvs" / "nosuchpeer"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    # No bench/peers/nosuchpeer_worker.py: the worker's python exits at once, saying so.
    with pytest.raises(RuntimeError) as error:
        run_peer(Peer("nosuchpeer", venv), "redis://127.0.0.1:1/0", 10, tmp_path)
    assert "nosuchpeer worker did not get ready" in str(error.value)
    assert "nosuchpeer_worker.py" in str(error.value)
