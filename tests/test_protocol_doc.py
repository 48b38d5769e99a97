"""docs/PROTOCOL.md's redis-cli walk-through, run as written against a real server.

The doc promises that its commands alone submit a job and read its result; this runs the
block in bash (only `redis-cli` is pointed at the test's redis-server) and compares what it
prints with the replies the doc shows.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import msgpack

from orchestrator.private_redis import PrivateRedisServer
from orchestrator.queue.config import QueueConfig
from orchestrator.queue.schema import JOB_FIELDS, RESULT_FIELDS, decode_job
from orchestrator.queue.serve import ServerThread
from orchestrator.queue.server_load import ACTOR_LOAD_FIELDS, LOAD_FIELDS
from tests.support.queue_runners import ScriptedRunner

DOC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"


def walkthrough() -> str:
    section = DOC.read_text().split("## A job by hand with `redis-cli`", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def test_the_redis_cli_walkthrough_submits_a_job_and_reads_its_result(
    redis_server: PrivateRedisServer,
) -> None:
    server = ServerThread(
        QueueConfig(redis_server.url, "default", "vlmq", idle_wait_s=0.2), ScriptedRunner()
    )
    server.start()
    try:
        script = f"redis-cli() {{ command redis-cli -p {redis_server.port} \"$@\"; }}\n"
        script += walkthrough()
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
            timeout=60, check=False,
        )
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    assert printed[:3] == ["created", "hello-1", "queued"]
    assert printed[3:5] == ["succeeded", "1"]
    shown = next(line for line in walkthrough().splitlines() if line.startswith('# "\\x8b'))
    assert printed[5].startswith(shown[2:].split("...", 1)[0])
    # The doc's payload is the schema's, and the stored result decodes as one.
    payload = redis_server.client().hget("{vlmq}:job:hello-1", "payload")
    assert decode_job(payload).prompt == "Say hi"
    result = msgpack.unpackb(redis_server.client().hget("{vlmq}:job:hello-1", "result"))
    assert tuple(result) == RESULT_FIELDS and result["text"] == "ih yaS"


def test_the_doc_tables_name_every_field_of_the_schema() -> None:
    text = DOC.read_text()
    job_table = text.split("## Payload schema", 1)[1].split("A result is", 1)[0]
    result_table = text.split("A result is one msgpack map", 1)[1].split("\n\n", 2)[1]
    for key in JOB_FIELDS:
        assert f"| `{key}` |" in job_table, key
    for key in RESULT_FIELDS:
        assert f"`{key}`" in result_table, key
    load_table = text.split("## Server load", 1)[1].split("\n## ", 1)[0]
    for key in LOAD_FIELDS:
        assert f"| `{key}` |" in load_table, key
    for key in ACTOR_LOAD_FIELDS:
        assert f"`{key}`" in load_table, key
