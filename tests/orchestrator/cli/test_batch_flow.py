"""The repository's sample batch file as a person runs it: `vlmq serve` with the tiny model,
then `vlmq submit`, `vlmq status --watch`, `vlmq results` and `vlmq cancel`, each a real
command in a process of its own against a real redis-server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.cli.exit_codes import ExitCode
from orchestrator.private_redis import PrivateRedisServer
from tests.support.serve_process import REPO, ServeProcess
from tests.support.vlmq_cli import run_vlmq

SAMPLE = REPO / "examples" / "batch" / "requests.jsonl"
QUEUE = "samples"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_sample_batch_file_goes_through_submit_watch_results(
    model_dir: Path, redis_server: PrivateRedisServer, tmp_path: Path
) -> None:
    redis = ["--redis-url", redis_server.url, "--queue", QUEUE]
    # Before any server ran, the queue has no chat template: the file is refused whole, so
    # its chat lines are not recorded as failed for good.
    early = run_vlmq("submit", str(SAMPLE), *redis)
    assert early.returncode == ExitCode.FAILED
    assert "has no chat template yet" in early.stderr

    serve = ServeProcess(
        "orchestrator.cli", "serve", "--model", str(model_dir), *redis, "--num-gpus", "2",
        "--generator-actors", "2", "--image-root", str(SAMPLE.parent),
        log=tmp_path / "serve.log",
    ).start(timeout_s=180)
    try:
        submitted = run_vlmq("submit", str(SAMPLE), *redis, "--json")
        assert submitted.returncode == ExitCode.PARTIAL, submitted.stderr
        report = json.loads(submitted.stdout)
        assert (report["lines"], report["accepted"]) == (12, 9)
        assert [(e["line"], e["code"]) for e in report["line_errors"]] == [
            (8, "invalid_json"), (9, "duplicate_custom_id"), (10, "unsupported_field")]
        batch = report["batch"]

        watched = run_vlmq("status", batch, "--watch", "--interval", "0.3", "--json",
                           "--redis-url", redis_server.url, timeout_s=300)
        assert watched.returncode == ExitCode.OK, watched.stderr
        final = json.loads(watched.stdout.splitlines()[-1])
        assert final["status"] == "completed"
        assert final["request_counts"] == {
            "total": 12, "completed": 7, "failed": 5, "cancelled": 0, "expired": 0}

        out, err = tmp_path / "output.jsonl", tmp_path / "errors.jsonl"
        results = run_vlmq("results", batch, "-o", str(out), "--errors", str(err),
                           "--redis-url", redis_server.url)
        assert results.returncode == ExitCode.OK, results.stderr
        outputs = {line["custom_id"]: line for line in read_jsonl(out)}
        assert set(outputs) == {"sunset-caption", "sunset-colors", "shapes-inline",
                                "chart-with-system", "two-images", "text-only", "raw-prompt"}
        chat = outputs["two-images"]["response"]["body"]
        assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["content"]
        assert outputs["raw-prompt"]["response"]["body"]["object"] == "text_completion"
        codes = {(line["custom_id"], (line["response"] or {}).get("body", {})
                  .get("error", {}).get("code")) for line in read_jsonl(err)}
        assert codes == {
            (None, "invalid_json"), ("sunset-caption", "duplicate_custom_id"),
            ("two-answers", "unsupported_field"), ("missing-image", "image_fetch"),
            ("corrupt-image", "corrupt_image"),
        }

        again = run_vlmq("submit", str(SAMPLE), *redis, "--json")
        assert json.loads(again.stdout)["accepted"] == 0
        assert json.loads(again.stdout)["already_accepted"] == 9
        done = run_vlmq("cancel", batch, "--redis-url", redis_server.url)
        assert done.returncode == ExitCode.FAILED and "has completed" in done.stderr
    finally:
        serve.stop()
