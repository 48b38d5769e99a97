"""Batch files end to end on a real redis-server and an in-process queue server: submit and
resume (also after a kill -9 of the submitter), the completion window, cancel, and the
OpenAI output and error files, partial and whole.

Lines use vlmq's raw endpoint, so no chat template is needed, and the scripted runner at the
queue's seam (its prompt words say what a job does: `sleep:S` takes S seconds).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.batches.batch_ids import batch_id_for, file_fingerprint, job_id_for
from orchestrator.batches.batch_record import read_batch
from orchestrator.batches.results_export import export_results
from orchestrator.batches.submitter import submit_batch_file
from orchestrator.private_redis import PrivateRedisServer
from orchestrator.queue.client import Client
from orchestrator.queue.config import QueueConfig
from orchestrator.queue.serve import ServerThread
from tests.support.queue_runners import ScriptedRunner
from tests.support.serve_process import REPO
from tests.support.waiting import wait_for

QUEUE = "files"


@dataclasses.dataclass
class Rig:
    redis_server: PrivateRedisServer
    namespace: str
    client: Client
    servers: list[ServerThread]

    def start_server(self, capacity: int = 8) -> ScriptedRunner:
        runner = ScriptedRunner(capacity=capacity)
        config = QueueConfig(
            self.redis_server.url, QUEUE, self.namespace, lease_s=3.0, renew_every_s=0.5,
            reap_every_s=0.2, idle_wait_s=0.2, drain_grace_s=2.0,
        )
        server = ServerThread(config, runner)
        server.start()
        self.servers.append(server)
        return runner


@pytest.fixture
def rig(redis_server: PrivateRedisServer) -> Iterator[Rig]:
    namespace = f"f-{uuid.uuid4().hex[:8]}"
    client = Client(redis_server.url, namespace=namespace)
    rig = Rig(redis_server, namespace, client, [])
    yield rig
    for server in rig.servers:
        server.stop()
    client.close()


def raw_line(custom_id: str, prompt: str, **body: Any) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/vlmq/v1/generate",
                       "body": {"prompt": prompt, "max_tokens": 4, **body}})


def write_file(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_file_resubmitted_adds_nothing_and_its_results_are_openai_files(
    rig: Rig, tmp_path: Path
) -> None:
    path = write_file(tmp_path / "in.jsonl", [
        raw_line("a", "hello a"),
        raw_line("b", "hello b"),
        '{"custom_id": "broken", ',
        raw_line("a", "a second a"),
        "",
        raw_line("c", "bad input"),  # the scripted runner fails it as the job's own fault
    ])
    first = submit_batch_file(rig.client, path, queue=QUEUE, template=None)
    assert (first.created, first.lines, first.accepted, first.known) == (True, 5, 3, 0)
    assert [(e.line, e.code) for e in first.line_errors] == [
        (3, "invalid_json"), (4, "duplicate_custom_id")]
    again = submit_batch_file(rig.client, path, queue=QUEUE, template=None)
    assert (again.created, again.accepted, again.known) == (False, 0, 3)
    assert again.batch_id == first.batch_id == batch_id_for(file_fingerprint(path), QUEUE)
    assert rig.client.batch(first.batch_id).counts().total == 3

    rig.start_server()
    rig.client.batch(first.batch_id).wait(timeout_s=30)
    report = export_results(rig.client, first.batch_id, tmp_path / "out.jsonl",
                            tmp_path / "err.jsonl")
    assert (report.outputs, report.errors, report.unfinished) == (2, 3, 0)
    outputs = {o["custom_id"]: o for o in read_jsonl(tmp_path / "out.jsonl")}
    assert set(outputs) == {"a", "b"}
    body = outputs["a"]["response"]["body"]
    assert outputs["a"]["response"]["status_code"] == 200 and outputs["a"]["error"] is None
    assert body["choices"][0]["text"] == "hello a"[::-1]
    assert body["usage"]["total_tokens"] == (body["usage"]["prompt_tokens"]
                                             + body["usage"]["completion_tokens"]) > 0
    errors = {(e["custom_id"], e["response"]["body"]["error"]["code"])
              for e in read_jsonl(tmp_path / "err.jsonl")}
    assert errors == {(None, "invalid_json"), ("a", "duplicate_custom_id"),
                      ("c", "invalid_request")}
    info = read_batch(rig.client, first.batch_id)
    assert info.status == "completed"
    assert dataclasses.astuple(info.request_counts) == (5, 2, 3, 0, 0)
    assert info.prompt_tokens == len("hello a") + len("hello b")


_KILLED_SUBMITTER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from orchestrator.batches import submitter
    from orchestrator.queue.client import Client

    windows = 0
    def crash_after_two_windows(progress):
        global windows
        windows += 1
        if windows == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: a crash
    url, namespace, path, queue = sys.argv[1:]
    submitter.WINDOW_LINES = 100
    with Client(url, namespace=namespace) as client:
        submitter.submit_batch_file(client, Path(path), queue=queue, template=None,
                                    on_progress=crash_after_two_windows)
""")


def test_a_submitter_killed_mid_file_resumes_without_repeating_a_line(
    rig: Rig, tmp_path: Path
) -> None:
    lines = [raw_line(f"line-{i}", f"prompt {i}") for i in range(450)]
    lines[150] = raw_line("line-150", "<image> without its image")  # a line error mid-file
    path = write_file(tmp_path / "in.jsonl", lines)
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_SUBMITTER, rig.redis_server.url, rig.namespace,
         str(path), QUEUE],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    batch_id = batch_id_for(file_fingerprint(path), QUEUE)
    info = read_batch(rig.client, batch_id)
    assert info.next_line == 201 and info.counts.total == 199  # two windows of 100, one bad

    resumed = submit_batch_file(rig.client, path, queue=QUEUE, template=None)
    assert (resumed.created, resumed.known, resumed.accepted) == (False, 199, 250)
    job_ids = rig.client.batch(batch_id).job_ids()
    assert len(job_ids) == len(set(job_ids)) == 449
    assert set(job_ids) == {job_id_for(batch_id, f"line-{i}") for i in range(450) if i != 150}
    assert [e.line for e in resumed.line_errors] == [151]
    assert read_batch(rig.client, batch_id).line_errors == 1


def test_the_completion_window_expires_what_is_unfinished_and_keeps_what_finished(
    rig: Rig, tmp_path: Path
) -> None:
    runner = rig.start_server(capacity=2)
    path = write_file(tmp_path / "in.jsonl", [
        raw_line("quick-1", "quick one"), raw_line("quick-2", "quick two"),
        *(raw_line(f"slow-{i}", "sleep:30 slow") for i in range(4)),
    ])
    report = submit_batch_file(rig.client, path, queue=QUEUE, template=None,
                               completion_window_s=1.5)
    batch = rig.client.batch(report.batch_id)
    batch.wait(timeout_s=30)  # the server's reaper expires it; no client call needed
    info = read_batch(rig.client, report.batch_id, expire_due=False)
    assert info.status == "expired"
    assert dataclasses.astuple(info.request_counts) == (6, 2, 0, 0, 4)
    assert len(runner.cancelled) == 2  # the two slow ones that were running were stopped
    export_results(rig.client, report.batch_id, tmp_path / "out.jsonl", tmp_path / "err.jsonl")
    assert {o["custom_id"] for o in read_jsonl(tmp_path / "out.jsonl")} == {"quick-1", "quick-2"}
    errors = read_jsonl(tmp_path / "err.jsonl")
    assert {e["custom_id"] for e in errors} == {f"slow-{i}" for i in range(4)}
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert all(e["response"] is None for e in errors)
    # An expired batch takes nothing more: a resubmission reports it and adds nothing.
    late = submit_batch_file(rig.client, path, queue=QUEUE, template=None)
    assert (late.closed, late.accepted) == ("expired", 0)


def test_an_expired_batch_nobody_serves_ends_when_it_is_read(rig: Rig, tmp_path: Path) -> None:
    path = write_file(tmp_path / "in.jsonl", [raw_line("a", "hello"), raw_line("b", "hi")])
    report = submit_batch_file(rig.client, path, queue=QUEUE, template=None,
                               completion_window_s=1.0)
    assert read_batch(rig.client, report.batch_id).status == "in_progress"
    wait_for(lambda: read_batch(rig.client, report.batch_id).status == "expired",
             "the batch to expire", 10)
    counts = read_batch(rig.client, report.batch_id).counts
    assert (counts.cancelled, counts.open) == (2, 0)


def test_cancel_keeps_finished_lines_and_the_rest_end_batch_cancelled_partial_results_first(
    rig: Rig, tmp_path: Path
) -> None:
    rig.start_server(capacity=1)
    path = write_file(tmp_path / "in.jsonl", [
        raw_line("quick", "quick"), *(raw_line(f"slow-{i}", "sleep:30 slow") for i in range(3)),
    ])
    report = submit_batch_file(rig.client, path, queue=QUEUE, template=None)
    batch = rig.client.batch(report.batch_id)
    wait_for(lambda: batch.counts().running == 1 and batch.counts().succeeded == 1,
             "the quick line done and a slow one running", 20)
    partial = export_results(rig.client, report.batch_id, tmp_path / "out.jsonl")
    assert (partial.outputs, partial.unfinished) == (1, 3)
    assert [o["custom_id"] for o in read_jsonl(tmp_path / "out.jsonl")] == ["quick"]

    assert batch.cancel() == 3
    batch.wait(timeout_s=20)
    info = read_batch(rig.client, report.batch_id)
    assert info.status == "cancelled"
    assert dataclasses.astuple(info.request_counts) == (4, 1, 0, 3, 0)
    final = export_results(rig.client, report.batch_id, tmp_path / "out.jsonl",
                           tmp_path / "err.jsonl")
    assert (final.outputs, final.errors, final.unfinished) == (1, 3, 0)
    assert {e["error"]["code"] for e in read_jsonl(tmp_path / "err.jsonl")} == {
        "batch_cancelled"}
    assert submit_batch_file(rig.client, path, queue=QUEUE, template=None).closed == "cancelled"
