"""Images by reference through the whole pipeline (local Ray, tiny model): the same PNG inline,
as an ImagePath and as an ImageURL served on 127.0.0.1 gives the same text and one image key;
a refused or failing source fails only its own job, typed."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.image_fetch import ImageSourcePolicy
from orchestrator.image_ref import ImageInput, ImagePath, ImageURL
from orchestrator.pipeline.job import JobRequest
from orchestrator.private_redis import PrivateRedisServer
from tests.support.image_server import body, image_server
from tests.support.pipeline_fixtures import IMAGES, outcomes_by_id, running_pipeline
from worker.sampling_params import SamplingParams

pytestmark = pytest.mark.usefixtures("ray_cluster")

PNG = IMAGES[1]


def test_inline_path_and_url_images_meet_as_one_image(
    model_dir: Path, redis_server: PrivateRedisServer, tmp_path: Path
) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "one.png").write_bytes(PNG)
    with image_server({"/one.png": body(PNG), "/busy": body(b"", "text/plain", 503)}) as server:
        other_port = server.port + 1 if server.port < 65535 else server.port - 1
        sources: dict[str, ImageInput] = {
            "inline": PNG,
            "path": ImagePath("one.png"),
            "url": ImageURL(server.url("/one.png")),
            "refused": ImageURL(f"http://127.0.0.1:{other_port}/one.png"),
            "escape": ImagePath("../images/one.png"),
            "busy": ImageURL(server.url("/busy")),
        }
        jobs = [
            JobRequest(name, "What is in <image>?", (source,), SamplingParams(max_new_tokens=6))
            for name, source in sources.items()
        ]
        policy = ImageSourcePolicy(
            image_root=str(tmp_path / "images"),
            allow_loopback=True,
            allowed_hosts=(f"127.0.0.1:{server.port}",),
        )
        with running_pipeline(model_dir, redis_server.url, image_sources=policy) as pipeline:
            outcomes = outcomes_by_id(list(pipeline.run(jobs)))
            progress = pipeline.progress
        assert sorted(server.paths_seen()) == ["/busy", "/one.png"]  # read on the cluster side
    texts = set()
    for name in ("inline", "path", "url"):
        outcome = outcomes[name]
        assert outcome.ok and outcome.result is not None, outcome.failure
        texts.add(outcome.result.text)
    assert len(texts) == 1
    # One vision call for the three: the bytes read are the bytes inline, so one image key.
    assert (progress.vision_calls, progress.feature_reuses) == (1, 2)
    failures = {name: outcomes[name].failure for name in ("refused", "escape", "busy")}
    assert {name: (f.error_type, f.is_job_error) for name, f in failures.items() if f} == {
        "refused": ("ImageFetchRefusedError", True),
        "escape": ("ImageFetchRefusedError", True),
        "busy": ("ImageFetchTransientError", False),  # not the job's fault: the queue retries
    }
    assert f"port {other_port} is not on" in str(failures["refused"])
    assert "answered HTTP 503" in str(failures["busy"])
