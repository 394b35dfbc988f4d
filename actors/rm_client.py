"""A reward worker's side of the reward-model service (`reward.service.enabled`): its `type: model` scorers
send (prompt, response) strings to a RewardModelServer (alignray.actors.rm_server) instead of holding a model.

The driver sends the ready servers with every score call (`ServerSet.update`), so a worker always calls the
current ones. Calls go round robin, each worker starting at its own offset; a server that died (or is
unreachable, or lost its node) is skipped for the rest of the batch and its call goes to the next live one,
and the batch's stats name it (`LOST_KEY`) so the driver replaces it. With no live server left, or a server
that hangs past the timeout, the call raises that server's `ActorFault`: the driver replaces the server and
has the batch scored again. No batch is ever scored silently without its model.
"""

from __future__ import annotations

import os

import numpy as np
import ray

from alignray.actors.calls import HUNG, OBJECT_LOST, UNREACHABLE, ActorFault, classify
from alignray.config_sections import ScorerConfig
from alignray.rewards.scorers import ScoreResult

LOST_KEY = "rm_servers_lost"
"""The key of a reward worker's batch stats that names the servers it found lost ({name: cause})."""


class ServerSet:
    """The servers a worker may call now, in round-robin order, and those found lost during this batch."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.handles: dict[str, ray.actor.ActorHandle] = {}
        self.lost: dict[str, str] = {}
        self._turn = os.getpid()  # workers start at different servers

    def update(self, handles: dict[str, ray.actor.ActorHandle]) -> None:
        """The ready servers, from the driver at each score call; forgets those lost in earlier batches."""
        self.handles, self.lost = dict(handles), {}

    def call(self, scorer: str, prompts: list[str], responses: list[str]) -> dict[str, np.ndarray]:
        """`scorer`'s columns for these samples from one live server, failing over from dead ones."""
        names = sorted(n for n in self.handles if n not in self.lost)
        first = self._turn % max(len(names), 1)
        self._turn += 1
        fault = None
        for name in names[first:] + names[:first]:
            ref = self.handles[name].score.remote(scorer, prompts, responses)
            try:
                return ray.get(ref, timeout=self.timeout_s)
            except Exception as exc:  # noqa: BLE001 - classified: a fault fails over, anything else is raised
                fault = classify(name, exc)
            if fault.cause == HUNG:  # alive but stuck: the driver replaces it (failing over would wait again)
                _cancel(ref)
                raise fault
            self.lost[name] = f"{fault.cause}: {fault.detail}"
        last = next(reversed(self.lost), "rm_server")  # none given: the driver sends only ready servers
        cause = fault.cause if fault is not None and fault.cause != OBJECT_LOST else UNREACHABLE
        raise ActorFault(last, cause, f"no live reward-model server left for this batch "
                                      f"({self.lost.get(last, 'none sent')})")


class ServedScorer:
    """A `type: model` scorer scored by the servers: the name, weight, gold flag and columns of a
    ModelScorer (alignray.rewards.scorers), no model in this process."""

    def __init__(self, cfg: ScorerConfig, servers: ServerSet):
        self.name, self.weight, self.gold = cfg.name, cfg.weight, cfg.gold
        self.servers = servers

    def score(self, prompts: list[str], responses: list[str]) -> ScoreResult:
        if not prompts:
            return ScoreResult({"reward": np.zeros(0, dtype=np.float32)})
        columns = self.servers.call(self.name, prompts, responses)
        return ScoreResult({k: np.asarray(v, dtype=np.float32) for k, v in columns.items()})


def _cancel(ref: ray.ObjectRef) -> None:
    try:
        ray.cancel(ref)
    except Exception:  # noqa: BLE001 - the server is going to be replaced anyway
        pass
