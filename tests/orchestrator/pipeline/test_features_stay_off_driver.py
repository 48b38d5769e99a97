"""Features of real size stay in the object store: the driver holds their references only.

The tiny model's test images make about 4 KiB of features, which Ray returns inline into the
driver's memory and forwards inline to generators (see tests/support/driver_objects.py), so
their bytes pass through the driver although it never unpickles them. Here the tiny Pixtral
model takes images up to 1024 px: 64 x 64 patches of 256 values, 2 MiB of features per image,
as a real model's are. Their location is checked, not only the driver's unpickle counter.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from orchestrator.pipeline.job import JobRequest
from orchestrator.private_redis import PrivateRedisServer
from tests.support.driver_objects import (
    features_received_here,
    memory_store_bytes_here,
    objects_held_here,
)
from tests.support.pipeline_fixtures import outcomes_by_id, running_pipeline
from tests.support.tiny_model_dirs import edit_json
from worker.actors.stats import ActorStats
from worker.sampling_params import SamplingParams
from worker.tiny.model import write_tiny_model

pytestmark = pytest.mark.usefixtures("ray_cluster")

EDGE = 1024  # pixels: 64 x 64 patches of 16 px
HIDDEN_SIZE = 256  # the tiny model's text hidden size, the width of a feature row
FEATURE_BYTES = (EDGE // 16) ** 2 * HIDDEN_SIZE * 2  # float16 rows: 2 MiB
NUM_IMAGES = 3


@pytest.fixture(scope="module")
def large_image_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Pixtral model, its images resized to fit 1024 px instead of 256.

    Pixtral's vision tower has no weights that depend on the image size (2D RoPE over patch
    positions), so only the two files that bound the size change.
    """
    model_dir = tmp_path_factory.mktemp("large-image-pixtral")
    write_tiny_model(model_dir, "pixtral")
    edit_json(
        model_dir / "preprocessor_config.json", lambda c: {**c, "size": {"longest_edge": EDGE}}
    )
    edit_json(
        model_dir / "config.json",
        lambda c: {**c, "vision_config": {**c["vision_config"], "image_size": EDGE}},
    )
    return model_dir


def large_png(seed: int) -> bytes:
    y, x = np.mgrid[0:EDGE, 0:EDGE]
    channels = [(x * (seed + 3)) % 256, (y * (seed + 5)) % 256, (x + y * seed) % 256]
    buffer = io.BytesIO()
    Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def generator_stats(pipeline: object) -> list[ActorStats]:
    generators = pipeline.pool.generators  # type: ignore[attr-defined]
    stats: list[ActorStats] = ray.get([g.stats.remote() for g in generators])
    return stats


def test_features_of_real_size_live_in_the_object_store_not_in_the_driver(
    large_image_model_dir: Path, redis_server: PrivateRedisServer
) -> None:
    images = [large_png(seed) for seed in range(NUM_IMAGES)]
    jobs = [
        JobRequest(f"large-{i}", f"Q{i}: what is <image>?", (images[i % NUM_IMAGES],),
                   SamplingParams(max_new_tokens=2))
        for i in range(2 * NUM_IMAGES)
    ]
    with features_received_here() as driver_received, running_pipeline(
        large_image_model_dir, redis_server.url
    ) as pipeline:
        outcomes = outcomes_by_id(list(pipeline.run(jobs)))
        # While the pipeline is open its feature cache still references every image's
        # features: what the driver holds now is what it held while the jobs ran.
        held = objects_held_here(min_bytes=FEATURE_BYTES)
        inline_bytes = memory_store_bytes_here()
        stats = generator_stats(pipeline)
        progress = pipeline.progress

    assert all(outcome.ok for outcome in outcomes.values()), outcomes
    assert progress.vision_calls == NUM_IMAGES
    # The features (2 MiB of rows and a small layout), one object per image, all in the
    # object store; nothing of that size sits inline in the driver.
    features = [o for o in held if FEATURE_BYTES <= o.num_bytes < FEATURE_BYTES + 2**16]
    assert len(features) == NUM_IMAGES, held
    assert all(o.in_object_store for o in held), held
    assert inline_bytes < FEATURE_BYTES
    assert driver_received.count == 0  # and it never read one
    assert sum(s.num_features_received for s in stats) >= len(jobs)  # the generators did
