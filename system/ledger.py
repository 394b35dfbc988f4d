"""The controller's ledger: where every prompt is between dispatch and consumption, by id.

A prompt handed to a rollout worker stays `in_flight` under that worker until its samples are consumed by a learner step
(or quarantined). If the worker dies, `requeue` puts its prompts back at the front of the queue, so no prompt is
lost; a checkpoint saves the queue plus everything in flight, so a resumed run re-generates what was not consumed.
"""

from __future__ import annotations

from collections import Counter, deque

from system.data import PromptSampler


class PromptLedger:
    def __init__(self, sampler: PromptSampler):
        self.sampler = sampler
        self.requeued: deque[int] = deque()
        self.in_flight: dict[int, str] = {}  # row index -> worker name
        self.counts: Counter = Counter()

    def dispatch(self, k: int, worker: str) -> list[int]:
        """The next `k` prompts (requeued ones first), recorded as in flight on `worker`."""
        rows = [self.requeued.popleft() for _ in range(min(k, len(self.requeued)))]
        rows += self.sampler.take(k - len(rows))
        for row in rows:
            self.in_flight[row] = worker
        self.counts["dispatched"] += len(rows)
        return rows

    def consume(self, rows: list[int], state: str = "consumed") -> None:
        """The learner used these prompts (or they were quarantined): they leave the ledger."""
        for row in rows:
            if self.in_flight.pop(row, None) is not None:
                self.counts[state] += 1

    def requeue(self, rows: list[int]) -> None:
        """These prompts' rollouts were lost: back to the front of the queue, in order."""
        for row in rows:
            self.in_flight.pop(row, None)
        self.requeued.extendleft(reversed(rows))
        self.counts["requeued"] += len(rows)

    def state_dict(self) -> dict:
        """Data position for a checkpoint: prompts in flight are not consumed, so they are saved as requeued."""
        return {"sampler": self.sampler.state_dict(), "requeued": list(self.in_flight) + list(self.requeued),
                "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.requeued = deque(int(r) for r in state["requeued"])
        self.in_flight.clear()
        self.counts = Counter(state.get("counts", {}))
