"""Queue throughput against peers (issue 9 §7): vlmq, arq and BullMQ on the same redis-server.

No-op jobs go through submit → claim → complete with one worker process per system. One private
redis-server (no persistence) serves every run, with a FLUSHALL before each. A run is timed end
to end, from the first submit until the submitter has seen the last result. arq and BullMQ run
in venvs of their own (scripts/bench-peers-setup), each as a worker process and a submitter
process from bench/peers/; the submitter times the run and prints one JSON line. vlmq runs
through bench/queue_vlmq.py in this process. Each repeat runs every system once, starting with
a different one each time so noise on a shared machine hits all alike; the best run counts.
Usage: .venv/bin/python -m bench.queue_peers [--jobs N] [--repeats R] [--only arq,bullmq,vlmq]
"""

from __future__ import annotations

import argparse
import json
import select
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from bench import queue_vlmq
from bench.machine import describe_machine
from orchestrator.private_redis import PrivateRedisServer

REPO = Path(__file__).resolve().parent.parent
VENV_ROOT = REPO / ".bench-venvs"
PEERS_DIR = REPO / "bench" / "peers"
SETUP_COMMAND = "scripts/bench-peers-setup"
SYSTEMS = ("vlmq", "arq", "bullmq")
LABELS = {"vlmq": "vlmq", "arq": "arq", "bullmq": "BullMQ"}

# Issue 9's goals for vlmq: jobs/s on its own, and how many times each peer's jobs/s.
GOAL_JOBS_PER_S = 3000.0
GOAL_RATIOS = {"arq": 1.5, "bullmq": 3.0}

READY_TIMEOUT_S = 60.0  # a worker that has not said "ready" by then is broken, not slow
RUN_TIMEOUT_S = 1800.0  # far above any run seen (the slowest, arq: 45 s for 20,000 jobs)
STOP_TIMEOUT_S = 30.0  # BullMQ's worker finishes its blocking poll (up to 5 s) before it exits



@dataclass(frozen=True, slots=True)
class Peer:
    name: str  # as in --only and in the submitter's JSON line
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def worker_script(self) -> Path:
        return PEERS_DIR / f"{self.name}_worker.py"

    @property
    def submit_script(self) -> Path:
        return PEERS_DIR / f"{self.name}_submit.py"


@dataclass(frozen=True, slots=True)
class Throughput:
    system: str
    num_jobs: int
    seconds: float  # the best run's, end to end

    @property
    def jobs_per_s(self) -> float:
        return self.num_jobs / self.seconds


def parse_only(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in SYSTEMS]
    if unknown or not names:
        what = f"unknown system {', '.join(map(repr, unknown))}" if unknown else "no system"
        raise argparse.ArgumentTypeError(f"{what}; choose from {','.join(SYSTEMS)}")
    return tuple(name for name in SYSTEMS if name in names)


def positive_int(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def peer(name: str, venv_root: Path = VENV_ROOT) -> Peer:
    return Peer(name, venv_root / name)


def missing_venvs(peers: Sequence[Peer]) -> list[Peer]:
    return [p for p in peers if not p.python.exists()]


def tail(text: str, num_lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-num_lines:])


def wait_ready(worker: subprocess.Popen[str], log: Path, name: str) -> None:
    stdout = cast(IO[str], worker.stdout)
    readable, _, _ = select.select([stdout], [], [], READY_TIMEOUT_S)
    line = stdout.readline().strip() if readable else ""
    if line != "ready":
        raise RuntimeError(
            f"{name} worker did not get ready (it said {line!r}, exit status "
            f"{worker.poll()}):\n{tail(log.read_text())}"
        )


def stop(worker: subprocess.Popen[str]) -> None:
    worker.terminate()
    try:
        worker.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def parse_report(stdout: str, name: str, num_jobs: int) -> float:
    """The seconds from the submitter's JSON line, after checking it speaks of this run."""
    lines = stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines else {}
    if report.get("system") != name or report.get("jobs") != num_jobs:
        raise RuntimeError(f"{name} submitter reported {stdout.strip()!r}, not {num_jobs} jobs")
    seconds = report.get("seconds")
    if not isinstance(seconds, float) or seconds <= 0:
        raise RuntimeError(f"{name} submitter reported seconds={seconds!r}")
    return seconds


def run_peer(p: Peer, redis_url: str, num_jobs: int, log_dir: Path) -> float:
    """One run: the peer's worker in one process, its submitter (which times it) in another."""
    log = log_dir / f"{p.name}-worker.log"
    with log.open("w") as log_file:
        worker = subprocess.Popen(
            [str(p.python), str(p.worker_script), redis_url],
            cwd=REPO, stdout=subprocess.PIPE, stderr=log_file, text=True,
        )
        try:
            wait_ready(worker, log, p.name)
            submit = subprocess.run(
                [str(p.python), str(p.submit_script), redis_url, str(num_jobs)],
                cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
            )
        finally:
            stop(worker)
    if submit.returncode != 0:
        raise RuntimeError(
            f"{p.name} submitter failed (exit status {submit.returncode}):\n{tail(submit.stderr)}"
        )
    return parse_report(submit.stdout, p.name, num_jobs)


def goal_mark(is_met: bool) -> str:
    return "met" if is_met else "not met"


def report_lines(results: Sequence[Throughput]) -> list[str]:
    """Jobs/s per system, then vlmq's goals (absolute and against each peer), met or not."""
    by_system = {result.system: result for result in results}
    lines = [
        f"{LABELS[r.system] + ':':8} {r.jobs_per_s:8,.0f} jobs/s ({r.seconds:.2f} s)"
        for r in results
    ]
    vlmq = by_system.get("vlmq")
    if vlmq is None:
        return [*lines, "goals: not judged, vlmq did not run"]
    lines.append(
        f"vlmq {vlmq.jobs_per_s:,.0f} jobs/s, goal >= {GOAL_JOBS_PER_S:,.0f}: "
        f"{goal_mark(vlmq.jobs_per_s >= GOAL_JOBS_PER_S)}"
    )
    for name, goal in GOAL_RATIOS.items():
        other = by_system.get(name)
        if other is not None:
            ratio = vlmq.jobs_per_s / other.jobs_per_s
            lines.append(
                f"vlmq / {LABELS[name]}: {ratio:.2f}x, goal >= {goal:g}x: "
                f"{goal_mark(ratio >= goal)}"
            )
    return lines


def rotated(systems: Sequence[str], repeat: int) -> list[str]:
    shift = repeat % len(systems)
    return [*systems[shift:], *systems[:shift]]


def main(argv: Sequence[str] | None = None, venv_root: Path = VENV_ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=positive_int, default=20000, help="no-op jobs per run")
    parser.add_argument("--repeats", type=positive_int, default=3, help="the best run counts")
    parser.add_argument(
        "--only", type=parse_only, default=SYSTEMS, help="comma-separated: arq,bullmq,vlmq"
    )
    args = parser.parse_args(argv)

    peers = {name: peer(name, venv_root) for name in args.only if name != "vlmq"}
    missing = missing_venvs(list(peers.values()))
    if missing:
        for p in missing:
            print(f"{p.name}: no venv at {p.venv}; make the peers' venvs with: {SETUP_COMMAND}")
        return 2
    systems: list[str] = list(args.only)

    seconds: dict[str, list[float]] = {name: [] for name in systems}
    with tempfile.TemporaryDirectory(prefix="vlmq-queue-peers-") as tmp:
        server = PrivateRedisServer(Path(tmp), persist_every_write=False)
        server.start()
        try:
            client = server.client()
            print(f"machine: {describe_machine()}")
            print(
                f"redis-server {client.info('server')['redis_version']} (private, no "
                f"persistence); {args.jobs} no-op jobs per run, one worker process per system; "
                f"best of {args.repeats}, systems interleaved"
            )
            for repeat in range(args.repeats):
                for name in rotated(systems, repeat):
                    client.flushall()
                    if name == "vlmq":
                        run_seconds = queue_vlmq.measure(server.url, args.jobs)
                    else:
                        run_seconds = run_peer(peers[name], server.url, args.jobs, Path(tmp))
                    seconds[name].append(run_seconds)
                    print(f"repeat {repeat + 1}: {LABELS[name]} {run_seconds:.2f} s", flush=True)
        finally:
            server.stop()
    best = [Throughput(name, args.jobs, min(seconds[name])) for name in systems]
    for line in report_lines(best):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
