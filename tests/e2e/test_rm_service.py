"""The reward-model service (`reward.service`) on real Ray with a real tiny reward model (random weights): it
scores what a reward worker's own copy scores, it batches requests of concurrent callers into fewer forwards,
callers fail over from a dead server, and an RL run scores through it."""

from __future__ import annotations

import json

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import ray
import torch
from conftest import tiny_overrides

from alignray.actors.calls import DIED, ActorFault, classify
from alignray.actors.rm_client import ServedScorer, ServerSet
from alignray.actors.rm_server import RewardModelServer
from alignray.config import Config, load_config
from alignray.driver.controller import Controller
from alignray.rewards.models import ScalarRewardModel
from alignray.rewards.scorers import ModelScorer
from alignray.rm.backbones import TinyModelSpec, build_word_tokenizer, new_backbone

pytestmark = pytest.mark.slow

WORDS = "the a an answer question vowels say something tell me about thing aeiou xkcd good bad"
PROMPTS = ["tell me about thing 1", "say something", "a question", "the answer", "aeiou aeiou", "xkcd"]
RESPONSES = ["aeiou good answer", "bad", "the answer is xkcd xkcd xkcd", "a", "good good good good", "xkcd ?"]
TINY = TinyModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)


@pytest.fixture(scope="module")
def rm_dirs(tmp_path_factory) -> list[str]:
    """Two tiny scalar reward models (random weights, seeds 0 and 1), saved."""
    root, tokenizer = tmp_path_factory.mktemp("rms"), build_word_tokenizer([WORDS])
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        backbone = new_backbone("sequence_classification", None, TINY, tokenizer)
        ScalarRewardModel(backbone, tokenizer, 64).save(root / f"rm{seed}")
        paths.append(str(root / f"rm{seed}"))
    return paths


def service_config(rm_dirs: list[str], **extra) -> Config:
    scorers = json.dumps([{"name": "vowels", "function": "vowel_ratio"},
                          {"name": "rm", "type": "model", "path": rm_dirs[0], "weight": 0.5, "batch_size": 4},
                          {"name": "ens", "type": "model", "weight": 0,
                           "ensemble": {"members": rm_dirs, "combine": "lcb"}}])
    return load_config(None, tiny_overrides(**{"reward.scorers": scorers, "reward.service.enabled": True,
                                               **extra}))


@pytest.fixture(scope="module")
def servers(ray_cluster, rm_dirs):
    """Two servers (a 100 ms batch window: requests sent together surely meet), started."""
    cfg = service_config(rm_dirs, **{"reward.service.batch_wait_ms": 100, "reward.service.max_batch_size": 8})
    handles = {f"rm_server-{i}": RewardModelServer.options(num_cpus=0.25).remote(cfg.model_dump(mode="json"))
               for i in range(2)}
    assert ray_cluster.get([h.ready.remote() for h in handles.values()]) == [True, True]
    yield cfg, handles
    for handle in handles.values():
        ray_cluster.kill(handle, no_restart=True)


def test_the_service_scores_what_a_workers_own_copy_scores(servers):
    cfg, handles = servers
    own = {c.name: ModelScorer(c) for c in cfg.reward.scorers if c.type == "model"}
    served = ServerSet(60.0)
    served.update(handles)
    for name, scorer in own.items():
        expected = scorer.score(PROMPTS, RESPONSES).columns
        got = ServedScorer(next(c for c in cfg.reward.scorers if c.name == name), served).score(PROMPTS,
                                                                                                RESPONSES)
        assert set(got.columns) == set(expected) and not got.errors
        for key, values in expected.items():  # other batch compositions: padding may differ, nothing else
            np.testing.assert_allclose(got.columns[key], values, atol=1e-5, rtol=0)
    assert set(own["ens"].score(PROMPTS, RESPONSES).columns) >= {"reward", "std", "member_0", "member_1"}


def test_concurrent_callers_are_batched_into_fewer_forwards(servers):
    cfg, handles = servers
    server = handles["rm_server-0"]
    before = ray.get(server.stats.remote())
    refs = [server.score.remote("rm", PROMPTS[i % 6:i % 6 + 1] * 2, RESPONSES[i % 6:i % 6 + 1] * 2)
            for i in range(12)]  # 12 callers' requests of 2 samples, in flight together
    results = ray.get(refs)
    after = ray.get(server.stats.remote())
    requests, forwards = after["requests"] - before["requests"], after["forwards"] - before["forwards"]
    samples = after["samples"] - before["samples"]
    assert requests == 12 and samples == 24 and all(len(r["reward"]) == 2 for r in results)
    assert forwards < requests and samples / forwards > 2, after  # batched across callers
    assert after["largest_forward"] <= 8  # reward.service.max_batch_size
    alone = ModelScorer(cfg.reward.scorers[1]).score(PROMPTS, RESPONSES).columns["reward"]
    np.testing.assert_allclose(np.concatenate([r["reward"][:1] for r in results[:6]]), alone, atol=1e-5,
                               rtol=0)  # each caller got its own rows back


def kill_and_wait(actor) -> None:
    """`kill -9` of the actor's process, returning once the process is gone (no clock: the call that follows
    certainly meets a dead actor; `ray.kill` alone returns before the actor has died)."""
    process = psutil.Process(ray.get(actor.pid.remote()))
    process.kill()
    process.wait()


def test_a_run_scores_through_the_service_survives_a_dead_server_and_scales(ray_cluster, rm_dirs, tmp_path):
    """`reward.service.enabled=true reward.service.num_servers=2`, 3 steps. Step 1: the worker's two
    model-scorer calls go round robin, one to each server. After step 1 rm_server-1 is killed: in step 2 the
    call sent to it fails over to rm_server-0 (no batch re-scored, none lost) and the driver replaces the dead
    server (rm_server-2). After step 2 RUN_DIR/control.yaml asks for 1 server (`alignray scale RUN_DIR
    --rm-server 1`): the newest goes, step 3's calls all go to rm_server-0. The rollouts' reward_rm is what
    the model scores on its own."""
    cfg = service_config(rm_dirs, **{"train.steps": 3, "reward.service.num_servers": 2})
    controller = Controller(cfg, tmp_path / "run")

    def disturb(metrics: dict) -> None:
        if metrics["step"] == 1:
            kill_and_wait(controller.servers.actor("rm_server-1"))
        if metrics["step"] == 2:
            (tmp_path / "run" / "control.yaml").write_text("rm_servers: 1\n")

    try:
        history = controller.run(on_step=disturb)
        assert controller.servers.ready() == ["rm_server-0"] and controller.servers.target == 1
        stats = ray_cluster.get(controller.servers.actor("rm_server-0").stats.remote())
    finally:
        controller.close()
    assert [m["step"] for m in history] == [1, 2, 3] and "reward/rm/mean" in history[-1]
    assert np.isfinite(history[-1]["reward/mean"]) and "reward/ens/mean" in history[-1]
    assert history[-1]["fault/rescored"] == 0  # the worker failed over inside its call
    assert stats["requests"] == 1 + 2 + 2 and stats["samples"] == 5 * 8  # 8 samples a step
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [(e["role"], e["actor"], e["action"]) for e in events] == [
        ("rm_server", "rm_server-1", "replaced by rm_server-2; its callers failed over")]
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["pools"]["rm_server"]["target"] == 1
    table = pq.read_table(tmp_path / "run" / "rollouts")
    assert table.num_rows == 24 and {"reward_rm", "reward_ens", "reward_ens_std"} <= set(table.column_names)
    rm = ModelScorer(cfg.reward.scorers[1]).score(table["prompt"].to_pylist(), table["response"].to_pylist())
    np.testing.assert_allclose(np.asarray(table["reward_rm"]), rm.columns["reward"], atol=1e-5, rtol=0)
    total = np.asarray(table["reward_vowels"]) + 0.5 * np.asarray(table["reward_rm"])
    np.testing.assert_allclose(np.asarray(table["reward"]), total, rtol=1e-5, atol=1e-6)


def test_callers_fail_over_from_a_dead_server_and_name_it(servers):
    """The last test of `servers`: it kills them. A call that meets a dead server goes to the next live one
    and the server is named lost; with none left the call raises the server's fault, which the driver
    classifies as that server's (the batch is re-scored, never scored without its model)."""
    cfg, handles = servers
    served = ServerSet(60.0)
    served.update(handles)
    ray.kill(handles["rm_server-1"], no_restart=True)
    scorer = ServedScorer(cfg.reward.scorers[1], served)
    for _ in range(2):  # round robin: one of the two calls is sent to the dead server first
        assert len(scorer.score(PROMPTS, RESPONSES).columns["reward"]) == 6
    assert list(served.lost) == ["rm_server-1"] and served.lost["rm_server-1"].startswith(DIED)
    ray.kill(handles["rm_server-0"], no_restart=True)
    with pytest.raises(ActorFault) as lost:
        scorer.score(PROMPTS, RESPONSES)
    fault = lost.value
    assert fault.actor == "rm_server-0" and fault.cause == DIED

    @ray.remote(num_cpus=0)
    def reward_worker_call():
        raise fault

    with pytest.raises(Exception) as remote:
        ray.get(reward_worker_call.remote())
    assert classify("reward-0", remote.value) == fault  # the server's fault, not the reward worker's
