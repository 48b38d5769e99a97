"""A generator actor whose engine thread died ends its process, and Ray restarts it.

On a local Ray with two logical GPUs and the tiny Pixtral, with actors started as the pipeline
starts them (`ActorPool`). The engine's thread is killed for real: a `SystemExit` raised into it
from the actor's own process (through Ray's `__ray_call__`), as a bug or an interrupt would end
it. No request can do that any more, which is the point of the rest of issue 8.
"""

from __future__ import annotations

import ctypes
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray
from ray._private import state as ray_state
from ray.exceptions import RayActorError

from orchestrator.pipeline.actor_pool import ActorPool, PoolConfig
from worker.actors.generator import GenerationCall
from worker.engines import EngineConfig
from worker.generation import GenerationResult
from worker.sampling_params import SamplingParams

pytestmark = pytest.mark.usefixtures("ray_cluster")

READY_TIMEOUT_S = 180.0  # two shared cores load the tiny models
RESTART_TIMEOUT_S = 180.0


def kill_engine_thread(actor: object) -> str:
    """Run in the actor's process: raise SystemExit inside the engine's thread; its name."""
    # The engine thread is named for its model's family (other vlmq threads run beside it).
    (thread,) = [t for t in threading.enumerate() if t.name in ("vlmq-pixtral", "vlmq-qwen2-vl")]
    assert thread.ident is not None
    # Delivered when the thread next runs Python code: once a request wakes it.
    raised = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(SystemExit)
    )
    assert raised == 1
    return thread.name


def call(request_id: str) -> GenerationCall:
    return GenerationCall(request_id, "[INST]Hello[/INST]", (), SamplingParams(max_new_tokens=3))


def generate(generator: Any, request_id: str, timeout_s: float = 120) -> GenerationResult:
    reply = generator.generate.remote(call(request_id))
    result: GenerationResult = ray.get(reply, timeout=timeout_s)
    return result


def num_restarts(actor: Any) -> int:
    info: dict[str, Any] = ray_state.actors(actor_id=actor._actor_id.hex())
    return int(info["NumRestarts"])


def test_a_generator_whose_engine_thread_died_is_restarted_and_answers(model_dir: Path) -> None:
    pool = ActorPool(
        PoolConfig(num_vision_actors=1, num_generator_actors=1,
                   name_prefix=f"t{uuid.uuid4().hex[:8]}"),
        EngineConfig(str(model_dir), max_batch_size=4),
    )
    try:
        pool.wait_until_ready(READY_TIMEOUT_S)
        generator = pool.generators[0]
        pid = ray.get(generator.stats.remote(), timeout=60).pid
        assert generate(generator, "before").num_completion_tokens == 3

        assert ray.get(generator.__ray_call__.remote(kill_engine_thread), timeout=60)
        # The request that wakes the dying thread fails with it: the process is gone.
        with pytest.raises(RayActorError):
            generate(generator, "wakes-it")

        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                after = generate(generator, "after", timeout_s=RESTART_TIMEOUT_S)
                break
            except RayActorError:  # still restarting
                assert time.monotonic() < deadline, "the generator was not restarted in time"
                time.sleep(0.5)
        assert after.num_completion_tokens == 3
        assert ray.get(generator.stats.remote(), timeout=60).pid != pid
        assert num_restarts(generator) >= 1
    finally:
        pool.kill()
