"""The vision and generator actors on a local Ray with two logical GPUs and the tiny Pixtral.

Each test starts its own actors under a unique name prefix and kills them at its end. What is
checked is what Ray and the actors report from their own processes: `CUDA_VISIBLE_DEVICES`,
actor states and repr names from Ray's state API, pids, and each process's count of
ImageFeatures it unpickled. One test runs the generator actor as a plain class, without Ray,
and cancels its call's coroutine as `ray.cancel` does.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from ray._private import state as ray_state
from ray.exceptions import TaskCancelledError

from orchestrator.pipeline.actor_pool import ActorPool, ActorsNotReadyError, PoolConfig
from tests.support.driver_objects import features_received_here
from tests.support.transformers_fixtures import pattern_image
from tests.support.waiting import wait_for
from worker.actors.generator import GenerationCall, GeneratorActor, GeneratorActorConfig
from worker.actors.stats import ActorStats
from worker.encoding.text_tokenizer import HFTextTokenizer
from worker.engines import EngineConfig
from worker.engines.transformers.dynamic_batcher import DynamicBatcher
from worker.errors import AliasWithoutSpanError, JobError
from worker.generation import GenerationResult
from worker.images.visual_tokens import visual_layout
from worker.images.vlm_family import detect_family, read_image_params
from worker.sampling_params import SamplingParams
from worker.span import Span, SpanLayout
from worker.token_range import RESERVED_ID_BASE, TokenRange

pytestmark = pytest.mark.usefixtures("ray_cluster")

READY_TIMEOUT_S = 180.0  # two shared cores load several tiny models at once


@pytest.fixture
def start_pool(model_dir: Path) -> Iterator[Any]:
    """Start pools of real actors under a prefix of their own; kill them all at the end."""
    pools: list[ActorPool] = []

    def start(**settings: Any) -> ActorPool:
        config = PoolConfig(name_prefix=f"t{uuid.uuid4().hex[:8]}", **settings)
        pools.append(ActorPool(config, EngineConfig(str(model_dir), max_batch_size=4)))
        return pools[-1]

    yield start
    for pool in pools:
        pool.kill()


@ray.remote(num_gpus=1)
class GpuHolder:
    """Holds one whole GPU and nothing else, so the next actors must share the other."""

    def device(self) -> str | None:
        return os.environ.get("CUDA_VISIBLE_DEVICES")


def stats(actor: Any) -> ActorStats:
    result: ActorStats = ray.get(actor.stats.remote(), timeout=60)
    return result


def actor_info(actor: Any) -> dict[str, Any]:
    """Ray's own record of an actor, from its control store (the state API needs a dashboard)."""
    info: dict[str, Any] = ray_state.actors(actor_id=actor._actor_id.hex())
    return info


def test_each_actor_with_a_whole_gpu_sees_its_own(start_pool: Any) -> None:
    pool = start_pool(
        num_vision_actors=1,
        num_generator_actors=2,
        gpus_per_vision_actor=0,
        gpus_per_generator_actor=1,
    )
    pool.wait_until_ready(READY_TIMEOUT_S)
    devices = sorted(stats(generator).cuda_visible_devices for generator in pool.generators)
    assert devices == ["0", "1"]


def test_half_gpu_shares_put_a_vision_and_a_generator_actor_on_one_gpu(
    start_pool: Any,
) -> None:
    holder = GpuHolder.remote()  # type: ignore[attr-defined]
    try:
        held = ray.get(holder.device.remote(), timeout=60)
        pool = start_pool(
            num_vision_actors=1,
            num_generator_actors=1,
            gpus_per_vision_actor=0.5,
            gpus_per_generator_actor=0.5,
        )
        # Both fit only if they share the one GPU the holder left free.
        pool.wait_until_ready(READY_TIMEOUT_S)
        vision, generator = stats(pool.vision[0]), stats(pool.generators[0])
        assert held in ("0", "1")
        assert vision.cuda_visible_devices == generator.cuda_visible_devices
        assert vision.cuda_visible_devices == {"0": "1", "1": "0"}[held]
        assert vision.pid != generator.pid
    finally:
        ray.kill(holder, no_restart=True)


def test_an_actor_asking_for_more_gpus_than_exist_waits_and_the_pool_says_so(
    start_pool: Any,
) -> None:
    pool = start_pool(
        num_vision_actors=1,
        num_generator_actors=1,
        gpus_per_vision_actor=0.5,
        gpus_per_generator_actor=3,
        gpus_may_join=True,  # as on an autoscaling cluster: not refused up front, it waits
    )
    prefix = pool.config.name_prefix
    stats(pool.vision[0])  # the vision actor fits and starts

    started = time.monotonic()
    with pytest.raises(ActorsNotReadyError) as raised:
        pool.wait_until_ready(timeout_s=3)
    assert time.monotonic() - started < 30
    message = str(raised.value)
    assert message.startswith("1 actors not ready after 3s")
    assert f"(waiting for resources or still starting): {prefix}-generator-0." in message
    assert f"{prefix}-vision-0" not in message
    assert re.search(r"asks for 3\.5 GPUs; the cluster has 2, [\d.]+ free$", message), message

    # It waits in Ray's queue, neither dead nor failing: a call on it is simply not answered.
    generator = pool.generators[0]
    assert actor_info(generator)["State"] == "PENDING_CREATION"
    ready, _ = ray.wait([generator.stats.remote()], timeout=2)
    assert ready == []
    assert actor_info(generator)["State"] == "PENDING_CREATION"


def test_actors_name_themselves_for_the_dashboard(start_pool: Any) -> None:
    pool = start_pool(num_vision_actors=1, num_generator_actors=1)
    pool.wait_until_ready(READY_TIMEOUT_S)
    prefix = pool.config.name_prefix
    for kind, actor in (("VisionActor", pool.vision[0]), ("GeneratorActor", pool.generators[0])):
        info = actor_info(actor)
        # The actor's own __repr__, taken in its process, as Ray takes it for the dashboard.
        shown = ray.get(actor.__ray_call__.remote(repr), timeout=60)
        device = stats(actor).cuda_visible_devices
        assert shown == f"{kind}({info['Name']}, transformers, gpus={device})"
        assert info["Name"].startswith(f"{prefix}-")


def test_features_go_from_vision_to_generator_by_reference(
    start_pool: Any, model_dir: Path
) -> None:
    pool = start_pool(num_vision_actors=1, num_generator_actors=1)
    pool.wait_until_ready(READY_TIMEOUT_S)
    vision, generator = pool.vision[0], pool.generators[0]
    image = pattern_image(48, 32, seed=5)

    features, num_rows = vision.embed.options(num_returns=2).remote(image)
    layout = _span_layout(model_dir, image.width, image.height)
    assert ray.get(num_rows, timeout=60) == layout.num_image_rows
    span = Span("<$IMG_cat$>", TokenRange(0, RESERVED_ID_BASE, layout.num_rows), layout)
    received_before = stats(generator).num_features_received

    with features_received_here() as in_driver:
        results = ray.get(
            [
                generator.generate.remote(
                    GenerationCall(
                        f"by-ref-{i}",
                        f"[INST]Question {i} about <$IMG_cat$>?[/INST]",
                        (span,),
                        SamplingParams(max_new_tokens=4),
                    ),
                    features,  # an ObjectRef: Ray resolves it in the generator's process
                )
                for i in range(2)
            ],
            timeout=120,
        )

    assert [r.num_completion_tokens for r in results] == [4, 4]
    assert stats(generator).num_features_received == received_before + 2
    assert stats(vision).num_features_received == 0  # it pickles features; it never reads any
    # Read in the driver's own process only: these small features are inlined by Ray (see
    # tests/orchestrator/pipeline/test_features_stay_off_driver.py for object-store sizes).
    assert in_driver.count == 0  # the driver unpickled none


def test_a_job_error_in_an_actor_reaches_the_caller_typed_and_the_actor_stays(
    start_pool: Any,
) -> None:
    pool = start_pool(num_vision_actors=1, num_generator_actors=1)
    pool.wait_until_ready(READY_TIMEOUT_S)
    generator = pool.generators[0]
    pid = stats(generator).pid
    sampling = SamplingParams(max_new_tokens=3)

    stray_alias = GenerationCall("stray", "[INST]Describe <image>[/INST]", (), sampling)
    with pytest.raises(JobError) as raised:
        ray.get(generator.generate.remote(stray_alias), timeout=60)
    assert isinstance(raised.value, AliasWithoutSpanError)
    assert "<image>" in str(raised.value)

    after = stats(generator)
    assert (after.pid, after.num_failed, after.num_completed) == (pid, 1, 0)
    fine = GenerationCall("fine", "[INST]Hello[/INST]", (), sampling)
    assert ray.get(generator.generate.remote(fine), timeout=60).num_completion_tokens == 3
    assert stats(generator).pid == pid
    assert actor_info(generator)["NumRestarts"] == 0


def _span_layout(model_dir: Path, width: int, height: int) -> SpanLayout:
    """The layout the pipeline computes from an image's size alone, before the tower runs."""
    family = detect_family(json.loads((model_dir / "config.json").read_text()))
    params = read_image_params(model_dir, family)
    special = HFTextTokenizer.from_model_dir(model_dir).special_pieces
    return visual_layout(width, height, params).span_layout(special)


def engine_counts(actor: GeneratorActor) -> tuple[int, int]:
    """Run in the actor's process: requests in its engine's batch now, and aborted so far."""
    engine = actor.engine
    assert isinstance(engine, DynamicBatcher)
    return engine.num_running, engine.num_aborted


def test_a_cancelled_generate_call_aborts_its_request_in_the_engine(model_dir: Path) -> None:
    # The actor as a plain class, on this process's event loop: what Ray does on ray.cancel is
    # cancel the call's coroutine, as the test does here.
    config = GeneratorActorConfig("in-process", EngineConfig(str(model_dir), max_batch_size=1))
    actor = GeneratorActor(config)
    long = GenerationCall("long", "[INST]Hello[/INST]", (), SamplingParams(max_new_tokens=2000))
    short = GenerationCall("short", "[INST]Hi[/INST]", (), SamplingParams(max_new_tokens=3))

    async def scenario() -> GenerationResult:
        call = asyncio.get_running_loop().create_task(actor.generate(long))
        await asyncio.sleep(0)  # the call runs up to its wait on the engine
        wait_for(lambda: engine_counts(actor) == (1, 0), "the request in the engine's batch")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        wait_for(lambda: engine_counts(actor)[0] == 0, "the batch slot freed")
        return await actor.generate(short)

    try:
        result = asyncio.run(scenario())
        assert engine_counts(actor)[1] == 1  # aborted once, not run to its end
        assert actor.stats().num_active == 0
        assert result.num_completion_tokens == 3
    finally:
        actor.engine.close()


def test_ray_cancel_of_a_generate_call_aborts_it_in_the_engine(start_pool: Any) -> None:
    pool = start_pool(num_vision_actors=1, num_generator_actors=1)
    pool.wait_until_ready(READY_TIMEOUT_S)
    generator = pool.generators[0]

    def counts() -> tuple[int, int]:
        result: tuple[int, int] = ray.get(generator.__ray_call__.remote(engine_counts), timeout=60)
        return result

    call = GenerationCall("long", "[INST]Hello[/INST]", (), SamplingParams(max_new_tokens=2000))
    long = generator.generate.remote(call)
    wait_for(lambda: counts() == (1, 0), "the request in the engine's batch")
    ray.cancel(long)
    with pytest.raises(TaskCancelledError):
        ray.get(long, timeout=60)
    wait_for(lambda: counts() == (0, 1), "the request aborted in the engine")
    after = stats(generator)
    assert (after.num_active, after.num_completed, after.num_failed) == (0, 0, 0)
    fine = GenerationCall("fine", "[INST]Hello[/INST]", (), SamplingParams(max_new_tokens=3))
    assert ray.get(generator.generate.remote(fine), timeout=60).num_completion_tokens == 3
