"""A queue server whose runner does nothing: what the queue itself costs, without a model.

    python -m bench.noop_server --redis-url URL [--namespace NS] [--queue Q] [--capacity N]

The runner answers each job at once with an empty success (`JobRunner`'s declared seam);
everything else is `vlmq serve`'s: the same QueueServer, library, leases and fencing.
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import Future

from orchestrator.pipeline.actor_load import ActorLoad
from orchestrator.pipeline.job import JobOutcome, JobRequest
from orchestrator.queue.config import QueueConfig
from orchestrator.queue.serve import serve_until_signalled
from orchestrator.queue.server import QueueServer
from worker.generation import FinishReason, GenerationResult, Timings

_NO_TIMINGS = Timings(queue_s=0.0, prefill_s=0.0, decode_s=0.0)


class NoOpRunner:
    def __init__(self, capacity: int) -> None:
        self._capacity = capacity

    @property
    def capacity(self) -> int:
        return self._capacity

    def submit(self, job: JobRequest) -> Future[JobOutcome]:
        future: Future[JobOutcome] = Future()
        result = GenerationResult(job.job_id, "", FinishReason.EOS, 0, 0, (), _NO_TIMINGS)
        future.set_result(JobOutcome(job.job_id, result, None, 1))
        return future

    def actor_loads(self) -> tuple[ActorLoad, ...]:
        return ()  # no actors: the server publishes its own counts only

    def cancel(self, job_id: str) -> bool:
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--namespace", default="bench")
    parser.add_argument("--queue", default="noop")
    parser.add_argument("--capacity", type=int, default=1000)
    args = parser.parse_args()
    config = QueueConfig(args.redis_url, queue=args.queue, namespace=args.namespace)
    server = QueueServer(config, NoOpRunner(args.capacity))
    asyncio.run(serve_until_signalled(server, "a no-op runner"))


if __name__ == "__main__":
    main()
