"""The history checker of the queue's reliability tests.

Each test records what was accepted (the receipts) and, afterwards, checks from Redis alone
that the queue kept its word: every accepted job reached exactly one final state, its batch
recorded exactly one final event for it (a second result would have written a second one),
no job outside the batch appears, nothing is left in a stream, a lease or a retry, and the
batch's counts agree with the jobs' states.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.queue.client import Batch, Client, Receipt
from orchestrator.queue.states import JobState
from tests.support.waiting import wait_for


@dataclass(frozen=True, slots=True)
class History:
    final_states: dict[str, JobState]
    deliveries: dict[str, int]

    def count(self, state: JobState) -> int:
        return sum(1 for s in self.final_states.values() if s is state)


def check_history(client: Client, batch: Batch, receipts: Sequence[Receipt], queue: str
                  ) -> History:
    accepted = {receipt.job_id for receipt in receipts}
    assert len(accepted) == len(receipts), "a job ID was accepted twice"
    events = Counter(
        fields[b"job"].decode() for _, fields in client.redis.xrange(batch.keys.events)
    )
    twice = {job: n for job, n in events.items() if n > 1}
    assert not twice, f"jobs that ended more than once: {twice}"
    lost, unknown = sorted(accepted - set(events)), sorted(set(events) - accepted)
    assert not lost and not unknown, f"lost: {lost[:10]}, unknown: {unknown[:10]}"
    final_states: dict[str, JobState] = {}
    deliveries: dict[str, int] = {}
    for job_id in sorted(accepted):
        status = client.status(job_id)
        assert status.state.is_terminal, f"{job_id} is still {status.state}"
        final_states[job_id] = status.state
        deliveries[job_id] = status.deliveries
    counts = batch.counts()
    assert counts.open == 0 and counts.total == len(accepted)
    by_state = Counter(final_states.values())
    for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.DEAD):
        assert getattr(counts, state.value) == by_state.get(state, 0), (state, counts, by_state)
    keys = client.keys.queue(queue)
    assert client.redis.zcard(keys.leases) == 0 and client.redis.zcard(keys.delayed) == 0
    # A cancelled job's entry stays until a claim reads it: an idle server's next claim.
    wait_for(
        lambda: sum(client.redis.xlen(keys.lane(p)) for p in range(3)) == 0,
        "no stream entry left behind",
        timeout_s=30,
    )
    return History(final_states, deliveries)
