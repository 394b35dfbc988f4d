"""The controller's ledger: where every prompt is between dispatch and consumption, by id.

A prompt handed to a rollout worker stays `in_flight` until its samples are consumed by a learner step (or
quarantined). If the worker dies, `requeue` puts its prompts back at the front of the queue, so no prompt is
lost; a checkpoint saves the queue plus everything in flight, so a resumed run re-generates what was not
consumed. In flight is a multiset: in async mode the same prompt can be out twice around an epoch boundary.
"""

from __future__ import annotations

from collections import Counter, deque

from alignray.data import PromptSampler


class PromptLedger:
    def __init__(self, sampler: PromptSampler):
        self.sampler = sampler
        self.requeued: deque[int] = deque()
        self.in_flight: Counter = Counter()  # row index -> how many dispatches of it are out
        self.counts: Counter = Counter()

    def dispatch(self, k: int) -> list[int]:
        """The next `k` prompts (requeued ones first), recorded as in flight."""
        rows = [self.requeued.popleft() for _ in range(min(k, len(self.requeued)))]
        rows += self.sampler.take(k - len(rows))
        self.in_flight.update(rows)
        self.counts["dispatched"] += len(rows)
        return rows

    def _settle(self, rows: list[int]) -> None:
        self.in_flight.subtract(rows)
        self.in_flight = +self.in_flight  # drop rows at zero

    def consume(self, rows: list[int], state: str = "consumed") -> None:
        """The learner used these prompts (or they were quarantined): they leave the ledger."""
        self._settle(rows)
        self.counts[state] += len(rows)

    def requeue(self, rows: list[int]) -> None:
        """These prompts' rollouts were lost: back to the front of the queue, in order."""
        self._settle(rows)
        self.requeued.extendleft(reversed(rows))
        self.counts["requeued"] += len(rows)

    def state_dict(self) -> dict:
        """Data position for a checkpoint: prompts in flight are not consumed, so they are saved as
        requeued."""
        return {"sampler": self.sampler.state_dict(),
                "requeued": list(self.in_flight.elements()) + list(self.requeued),
                "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.requeued = deque(int(r) for r in state["requeued"])
        self.in_flight.clear()
        self.counts = Counter(state.get("counts", {}))
