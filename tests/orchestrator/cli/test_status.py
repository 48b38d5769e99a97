"""`vlmq status`, run as a user runs it, against a real redis-server (and a scripted server)."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.cli.exit_codes import ExitCode
from orchestrator.private_redis import PrivateRedisServer, free_port
from orchestrator.queue.client import Client
from orchestrator.queue.config import QueueConfig
from orchestrator.queue.schema import JobSpec
from orchestrator.queue.serve import ServerThread
from orchestrator.queue.states import Priority
from tests.support.queue_runners import ScriptedRunner
from tests.support.vlmq_cli import VLMQ, run_vlmq, vlmq_env


@pytest.fixture
def namespace() -> str:
    return f"cli-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def client(redis_server: PrivateRedisServer, namespace: str) -> Iterator[Client]:
    with Client(redis_server.url, namespace=namespace) as client:
        yield client


def status(redis_server: PrivateRedisServer, namespace: str, *args: str
           ) -> subprocess.CompletedProcess[str]:
    return run_vlmq("status", "--redis-url", redis_server.url, "--namespace", namespace, *args)


def test_status_shows_a_queue_nobody_serves_a_batch_and_a_job(
    redis_server: PrivateRedisServer, namespace: str, client: Client
) -> None:
    client.new_batch("b1").submit(JobSpec("waiting", "captions", "hello", priority=Priority.HIGH))
    queue = status(redis_server, namespace, "--queue", "captions")
    assert queue.returncode == ExitCode.OK, queue.stderr
    assert queue.stdout.splitlines()[:2] == [
        "queue captions: 1 unfinished (high 1, normal 0, low 0 queued; 0 running, "
        "0 waiting to retry)",
        "served by nobody: its jobs wait until a `vlmq serve --queue captions` starts",
    ]
    job = status(redis_server, namespace, "--job", "waiting")
    assert job.stdout.startswith("job waiting: queued on queue captions, 0 deliveries")
    batch = status(redis_server, namespace, "b1")
    assert batch.stdout == (
        "batch b1: 1 jobs, 1 unfinished; 1 queued, 0 running, 0 succeeded, 0 failed, "
        "0 cancelled, 0 dead\n"
    )


def test_json_output_parses_and_has_the_fields(
    redis_server: PrivateRedisServer, namespace: str, client: Client
) -> None:
    client.new_batch("b1").submit_many(
        [JobSpec("a", "captions", "hello", priority=Priority.LOW), JobSpec("b", "captions", "hi")]
    )
    queue = json.loads(status(redis_server, namespace, "--queue", "captions", "--json").stdout)
    assert queue == {
        "queue": "captions", "unfinished": 2, "queued": {"high": 0, "normal": 1, "low": 1},
        "running": 0, "retrying": 0, "servers": [], "counters": queue["counters"], "loads": [],
    }
    assert queue["counters"]["submitted"] == 2
    job = json.loads(status(redis_server, namespace, "--job", "a", "--json").stdout)
    assert {k: job[k] for k in ("job_id", "queue", "state", "priority", "deliveries")} == {
        "job_id": "a", "queue": "captions", "state": "queued", "priority": 2, "deliveries": 0,
    }
    assert isinstance(job["created_ms"], int) and job["finished_ms"] is None
    assert job["history"] == []  # nothing has happened to it yet
    batch = json.loads(status(redis_server, namespace, "b1", "--json").stdout)
    assert batch == {
        "batch": "b1", "total": 2, "unfinished": 2, "done": False,
        "counts": {"queued": 2, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0,
                   "dead": 0},
    }


@pytest.mark.parametrize("what", [("--job", "nope"), ("nope",), ("nope", "--watch")])
def test_an_unknown_job_or_batch_exits_not_found(
    redis_server: PrivateRedisServer, namespace: str, what: tuple[str, ...]
) -> None:
    done = status(redis_server, namespace, *what, "--json")
    assert done.returncode == ExitCode.NOT_FOUND
    assert done.stdout == ""
    kind = "job" if what[0] == "--job" else "batch"
    assert done.stderr == f"Error: no {kind} nope (never submitted, or its result" + (
        "s expired)\n" if kind == "batch" else " expired)\n"
    )


def test_a_closed_port_exits_redis_unavailable_in_one_line() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    done = run_vlmq("status", "--redis-url", url)
    assert done.returncode == ExitCode.REDIS_UNAVAILABLE
    assert done.stderr.startswith(f"Error: cannot reach Redis at {url}: ")
    assert "Connection refused" in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("b1", "--job", "j"), "give a BATCH or --job ID, not both"),
        (("--watch",), "--watch follows a batch"),
        (("--namespace", "a b"), "namespace must be 1 to 64 characters"),
        (("b1", "--watch", "--interval", "0"), "not in the range x>=0.05"),
    ],
)
def test_contradictory_or_bad_options_are_usage_errors(
    redis_server: PrivateRedisServer, args: tuple[str, ...], message: str
) -> None:
    done = run_vlmq("status", "--redis-url", redis_server.url, *args)
    assert done.returncode == ExitCode.USAGE
    assert message in done.stderr


def test_the_redis_password_comes_from_the_environment_or_a_file_never_the_command_line(
    tmp_path: Path,
) -> None:
    password = secrets.token_hex(12)
    server = PrivateRedisServer(tmp_path, persist_every_write=False, password=password)
    server.start()
    try:
        plain = f"redis://127.0.0.1:{server.port}/0"
        refused = run_vlmq("status", "--redis-url", server.url)
        assert refused.returncode == ExitCode.USAGE
        assert "a password in --redis-url would show in process listings" in refused.stderr
        assert password not in refused.stderr + refused.stdout

        assert run_vlmq("status", env={"VLMQ_REDIS_URL": server.url}).returncode == ExitCode.OK
        from_env = run_vlmq("status", "--redis-url", plain, env={"VLMQ_REDIS_PASSWORD": password})
        assert from_env.returncode == ExitCode.OK, from_env.stderr
        secret = tmp_path / "redis-password"
        secret.write_text(password + "\n")
        from_file = run_vlmq("status", "--redis-url", plain, "--redis-password-file", str(secret))
        assert from_file.returncode == ExitCode.OK, from_file.stderr

        wrong = run_vlmq("status", "--redis-url", plain, env={"VLMQ_REDIS_PASSWORD": "wrong"})
        assert wrong.returncode == ExitCode.REDIS_UNAVAILABLE
        assert wrong.stderr.startswith(f"Error: Redis at {plain} refused the credentials: ")
        missing = run_vlmq("status", "--redis-url", plain)
        assert missing.returncode == ExitCode.REDIS_UNAVAILABLE
        assert "refused the credentials" in missing.stderr
        wrong_in_url = f"redis://:not-{password}@127.0.0.1:{server.port}/0"
        masked = run_vlmq("status", env={"VLMQ_REDIS_URL": wrong_in_url})
        assert masked.returncode == ExitCode.REDIS_UNAVAILABLE
        assert masked.stderr.startswith(f"Error: Redis at redis://:***@127.0.0.1:{server.port}/0 ")
        assert password not in masked.stderr
    finally:
        server.stop()


def test_watch_without_a_terminal_prints_a_line_per_reading_until_the_batch_is_done(
    redis_server: PrivateRedisServer, namespace: str, client: Client
) -> None:
    batch = client.new_batch("slow")
    batch.submit_many([JobSpec(f"j{i}", "default", "sleep:0.2 then done") for i in range(6)])
    server = ServerThread(
        QueueConfig(redis_server.url, "default", namespace, idle_wait_s=0.2, reap_every_s=0.2),
        ScriptedRunner(capacity=2),
    )
    server.start()
    try:
        plain = status(redis_server, namespace, "slow", "--watch", "--interval", "0.1")
        as_json = status(redis_server, namespace, "slow", "--watch", "--interval", "0.1",
                         "--json")
    finally:
        server.stop()
    assert plain.returncode == as_json.returncode == ExitCode.OK, plain.stderr + as_json.stderr
    last = plain.stdout.splitlines()[-1]
    assert last.startswith("batch slow: 6 jobs, 0 unfinished; 0 queued, 0 running, "
                           "6 succeeded, 0 failed, 0 cancelled, 0 dead; ")
    assert "\x1b[" not in plain.stdout  # no terminal, no escape codes
    readings = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert readings[-1]["done"] and readings[-1]["counts"]["succeeded"] == 6
    assert readings[-1]["eta_s"] == 0.0
    assert all(not reading["done"] for reading in readings[:-1])
    assert {"rate_per_s", "eta_s", "total", "unfinished", "counts"} <= set(readings[0])


def test_ctrl_c_stops_a_watch_quietly_with_exit_130(
    redis_server: PrivateRedisServer, namespace: str, client: Client
) -> None:
    client.new_batch("waiting").submit(JobSpec("never-served", "default", "hello"))
    watch = subprocess.Popen(
        [VLMQ, "status", "waiting", "--watch", "--interval", "0.1", "--redis-url",
         redis_server.url, "--namespace", namespace],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=vlmq_env(),
    )
    try:
        assert watch.stdout is not None
        first = watch.stdout.readline()  # each reading reaches a pipe as it is made
        assert first.startswith("batch waiting: 1 jobs, 1 unfinished; 1 queued")
        watch.send_signal(signal.SIGINT)
        _, stderr = watch.communicate(timeout=60)
    finally:
        watch.kill()
    assert watch.returncode == ExitCode.INTERRUPTED
    assert stderr == ""
