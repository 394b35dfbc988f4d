"""Multi-turn episodes through the real transformers engine (tiny random Llama, byte tokenizer): the turn
structure of the Arrow rows, observation tokens masked out, environment failures by sample id, async
environments stepped together; and, by hand, that masked tokens never reach the loss."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import close, t

from alignray.algorithms.advantages import token_level_rewards
from alignray.config_sections import AlgoConfig, ModelConfig, RolloutConfig
from alignray.errors import ConfigError, RewardError, SchemaError
from alignray.learner.batch import sequences_from_batch
from alignray.learner.objective import Objective, Tally, batch_counts
from alignray.models import load_policy
from alignray.rewards.scorers import EnvironmentScorer, score_batch
from alignray.rollout.engine import generate_rollout
from alignray.rollout.hf import HFEngine
from alignray.schema import check_batch, list_array
from alignray.tokenizer import build_byte_tokenizer

OBSERVATION = " -> tool says 7. "
SEEN: list[str] = []  # what TwoTurns environments were shown, in order
RELEASE = threading.Event()  # lets the Hangs environment's thread go at the end of the test


class TwoTurns:
    """A user's environment: turn 1 gets an observation and 0.25, turn 2 gets len(text) / 100 and ends."""

    def __init__(self, bonus: float = 0.25):
        self.bonus, self.turn = bonus, 0

    def reset(self, row: dict) -> str:
        return row["prompt"]

    def step(self, text: str) -> tuple[str | None, float, bool]:
        SEEN.append(text)
        self.turn += 1
        return (OBSERVATION, self.bonus, False) if self.turn == 1 else (None, len(text) / 100, True)


class Forever(TwoTurns):
    def step(self, text: str) -> tuple[str | None, float, bool]:
        return "ok. ", 1.0, False


class Raises(TwoTurns):
    def reset(self, row: dict) -> str:
        self.sample = row["sample_index"]
        return row["prompt"]

    def step(self, text: str) -> tuple[str | None, float, bool]:
        self.turn += 1
        if self.turn == 2 and self.sample == 1:
            raise ValueError("tool broke")
        return "x", 0.0, self.turn == 2


class Hangs(TwoTurns):
    def step(self, text: str) -> tuple[str | None, float, bool]:
        RELEASE.wait()  # a tool that never answers
        return None, 0.0, True


GATE = threading.Event()


class Waits(TwoTurns):
    def step(self, text: str) -> tuple[str | None, float, bool]:
        GATE.wait()
        return None, 0.0, True


class NanReward(TwoTurns):
    def step(self, text: str) -> tuple[str | None, float, bool]:
        return None, float("nan"), True


class Keyed(TwoTurns):
    """Reads the data row's own field (`answer`, from the prompt file) in reset; rewards a turn by it."""

    def reset(self, row: dict) -> str:
        self.answer = row["answer"]
        return row["prompt"]

    def step(self, text: str) -> tuple[str | None, float, bool]:
        return None, float(self.answer), True


class SlowAsync:
    """async reset and step: a batch's calls are awaited together."""

    in_flight = most = 0

    async def reset(self, row: dict) -> str:
        return row["prompt"]

    async def step(self, text: str) -> tuple[str | None, float, bool]:
        SlowAsync.in_flight += 1
        SlowAsync.most = max(SlowAsync.most, SlowAsync.in_flight)
        await asyncio.sleep(0.05)
        SlowAsync.in_flight -= 1
        return None, 1.0, True


class Affine:
    """A plain environment that needs its thread (like an sqlite3 connection): every call on one thread."""

    closed = 0

    def __init__(self):
        self.thread = threading.get_ident()

    def reset(self, row: dict) -> str:
        self.turn = 0
        return row["prompt"]

    def step(self, text: str) -> tuple[str | None, float, bool]:
        self.turn += 1
        return "ok. ", float(threading.get_ident() == self.thread), self.turn == 2

    def close(self) -> None:
        Affine.closed += 1


class AsyncAffine:
    """An async environment whose client is bound to its event loop: reset, the steps and close share it."""

    closed = 0

    async def reset(self, row: dict) -> str:
        self.loop, self.turn = asyncio.get_running_loop(), 0
        return row["prompt"]

    async def step(self, text: str) -> tuple[str | None, float, bool]:
        self.turn += 1
        return "ok. ", float(asyncio.get_running_loop() is self.loop), self.turn == 2

    async def close(self) -> None:
        AsyncAffine.closed += asyncio.get_running_loop() is self.loop


class BadClose(TwoTurns):
    def close(self) -> None:
        raise RuntimeError("leaked a socket")


@pytest.fixture(scope="module")
def tok():
    return build_byte_tokenizer()


@pytest.fixture(scope="module")
def engine(tok):
    return HFEngine(load_policy(ModelConfig(), len(tok)), tok.pad_token_id, tok.eos_token_id)


def prompts(tok, texts=("Count with me:", "Hi")) -> pa.RecordBatch:
    return pa.record_batch({"prompt_id": pa.array([5, 9][:len(texts)], pa.int64()), "prompt": list(texts),
                            "prompt_tokens": list_array([tok.encode(x) for x in texts], pa.int32())})


def rollout(engine, tok, env: str, seed: int = 0, on_error: str = "fail", **fields):
    rc = RolloutConfig(**{"env": f"test_episodes:{env}", "max_turns": 2, "max_new_tokens": 6,
                          "samples_per_prompt": 2, **fields})
    return generate_rollout(engine, tok, rc, prompts(tok), seed, 3, "test", on_error)


def test_two_turn_episodes_hold_the_whole_episode_with_the_observation_masked_out(engine, tok):
    SEEN.clear()
    batch, meta = rollout(engine, tok, "TwoTurns")
    rows = batch.to_pylist()
    assert len(rows) == 4 and [(r["prompt_id"], r["sample_index"]) for r in rows] == [(5, 0), (5, 1), (9, 0),
                                                                                      (9, 1)]
    obs = tok.encode(OBSERVATION)
    for r in rows:
        mask, tokens = np.array(r["loss_mask"]), np.array(r["response_tokens"])
        lp = np.array(r["response_logprobs"])
        first = int(np.argmin(mask))  # the policy's first turn, then the observation, then its second turn
        assert 1 <= first <= 6 and list(mask[first:first + len(obs)]) == [0] * len(obs)
        assert tokens[first:first + len(obs)].tolist() == obs and mask[first + len(obs):].all()
        assert len(tokens) - first - len(obs) in range(1, 7)
        assert (lp[mask == 0] == 0).all() and (lp[mask == 1] < 0).all()
        assert r["num_turns"] == 2 and r["finish_reason"] == "stop" and r["env_error"] is None
        second = tok.decode(tokens[first + len(obs):].tolist(), skip_special_tokens=True)
        assert r["turn_rewards"] == pytest.approx([0.25, len(second) / 100])
        assert r["response"] == tok.decode(tokens.tolist(), skip_special_tokens=True)
        # the engine's log-probs of both turns are those of one forward over the whole episode
        whole = engine.logprobs([np.array(r["prompt_tokens"])], [tokens], 1.0)[0]
        np.testing.assert_allclose(lp[mask == 1], whole[mask == 1], atol=1e-4)
    assert len(SEEN) == 8  # each environment saw its two turns, the policy's text only
    assert meta["new_tokens"] == sum(sum(r["loss_mask"]) for r in rows) and meta["turns"] == 8
    again, _ = rollout(engine, tok, "TwoTurns")
    assert again.column("response_tokens").equals(batch.column("response_tokens"))  # seeded
    other, _ = rollout(engine, tok, "TwoTurns", seed=1)
    assert not other.column("response_tokens").equals(batch.column("response_tokens"))


def test_the_generate_path_runs_the_same_episodes(tok):
    plain = HFEngine(load_policy(ModelConfig(), len(tok)), tok.pad_token_id, tok.eos_token_id, lean=False)
    batch, _ = rollout(plain, tok, "TwoTurns")
    assert batch.column("num_turns").to_pylist() == [2] * 4
    assert all(0 in m for m in batch.column("loss_mask").to_pylist())


def test_turns_and_token_budget_end_episodes(engine, tok):
    batch, _ = rollout(engine, tok, "Forever", max_turns=3)
    assert batch.column("finish_reason").to_pylist() == ["turns"] * 4
    assert batch.column("turn_rewards").to_pylist() == [[1.0, 1.0, 1.0]] * 4
    assert [m.count(0) for m in batch.column("loss_mask").to_pylist()] == [8] * 4  # two "ok. " observations
    # a budget of 8 tokens: the 6-token turn leaves no room for the 16-token observation
    batch, _ = rollout(engine, tok, "TwoTurns", max_episode_tokens=8)
    assert batch.column("finish_reason").to_pylist() == ["length"] * 4
    assert batch.column("num_turns").to_pylist() == [1] * 4
    assert all(set(m) == {1} for m in batch.column("loss_mask").to_pylist())


def test_an_environment_that_raises_fails_the_rollout_naming_the_samples(engine, tok):
    with pytest.raises(RewardError, match=r"reward failed for prompt_id=5 sample_index=1: reward 'env' "
                                          r"environment 'test_episodes:Raises' step raised ValueError: "
                                          r"tool broke \| prompt_id=9 sample_index=1"):
        rollout(engine, tok, "Raises")


def test_quarantine_keeps_the_failed_episodes_out_of_the_scored_batch(engine, tok):
    batch, _ = rollout(engine, tok, "Raises", on_error="quarantine")
    assert batch.column("env_error").to_pylist()[1].endswith("step raised ValueError: tool broke")
    assert batch.column("finish_reason").to_pylist() == ["stop", "error", "stop", "error"]
    scored, stats = score_batch(batch, [EnvironmentScorer(2.0)], "quarantine")
    assert scored.column("sample_index").to_pylist() == [0, 0]
    assert scored.column("reward").to_pylist() == [0.0, 0.0] and "reward_env" in scored.schema.names
    assert [q.split(":")[0] for q in stats["quarantined"]] == ["prompt_id=5 sample_index=1",
                                                               "prompt_id=9 sample_index=1"]


def test_a_hanging_environment_times_out_with_where_it_is_stuck(engine, tok):
    try:
        batch, _ = rollout(engine, tok, "Hangs", on_error="quarantine", env_timeout_s=0.2)
    finally:
        RELEASE.set()
    errors = batch.column("env_error").to_pylist()
    assert all("step timed out after 0.2s (rollout.env_timeout_s), stuck at" in e for e in errors)
    assert "test_episodes.py" in errors[0] and "in step" in errors[0]
    assert batch.column("num_turns").to_pylist() == [1] * 4


def test_an_environment_the_worker_cannot_load_is_one_line(engine, tok):
    with pytest.raises(ConfigError, match="rollout.env: cannot load 'test_episodes:Missing' on this "
                                          "worker: ValueError: environment 'test_episodes:Missing': "
                                          "test_episodes has no class 'Missing'"):
        rollout(engine, tok, "Missing")


def test_the_watchdogs_stack_shows_an_environment_call_in_progress():
    """What `watch_stack` answers while an actor waits on an environment: its own frames, then the call's."""
    from alignray.actors.watch import busy_stack
    from alignray.envs.api import EnvBatch

    envs = EnvBatch("test_episodes:Waits", {}, 60.0, [{"prompt": "p"}])
    caller = threading.Thread(target=envs.step, args=({0: "hi"},))
    caller.start()
    try:
        for _ in range(2000):  # until the environment's thread is inside step (a guard, not a time bound)
            report = busy_stack(exclude=threading.get_ident())
            if "GATE.wait()" in report:
                break
            time.sleep(0.01)
    finally:
        GATE.set()
        caller.join()
    assert "api.py" in report.split("waiting on")[0]  # the actor's thread: in alignray.envs.api, joining
    assert "waiting on the environment call:" in report and "test_episodes.py" in report
    assert "in step: GATE.wait()" in report


def test_bad_values_from_an_environment_are_failures(engine, tok):
    batch, _ = rollout(engine, tok, "NanReward", on_error="quarantine")
    assert "step returned (None, nan, True): the reward is nan" in batch.column("env_error").to_pylist()[0]


def test_reset_sees_the_data_rows_other_fields(engine, tok):
    rc = RolloutConfig(env="test_episodes:Keyed", samples_per_prompt=2, max_new_tokens=4)
    batch = prompts(tok).append_column("fields", pa.array(['{"answer": 3}', '{"answer": 4.5}']))
    out, _ = generate_rollout(engine, tok, rc, batch, 0, 0, "test")
    assert out.column("turn_rewards").to_pylist() == [[3.0], [3.0], [4.5], [4.5]]
    assert "fields" not in out.schema.names


@pytest.mark.parametrize("env", ["Affine", "AsyncAffine"])
def test_an_episodes_calls_share_one_thread_and_one_event_loop_then_close(engine, tok, env):
    cls = globals()[env]
    cls.closed = 0
    batch, _ = rollout(engine, tok, env)
    assert batch.column("turn_rewards").to_pylist() == [[1.0, 1.0]] * 4
    assert cls.closed == 4  # close() once per episode, at the end


def test_a_failing_close_is_a_failure_of_its_episode(engine, tok):
    batch, _ = rollout(engine, tok, "BadClose", on_error="quarantine")
    assert all(e.endswith("close raised RuntimeError: leaked a socket") for e in
               batch.column("env_error").to_pylist())


def test_async_environments_are_stepped_together(engine, tok):
    SlowAsync.most = 0
    batch, _ = rollout(engine, tok, "SlowAsync")
    assert SlowAsync.most == 4  # the batch's four episodes were in their step at once
    assert batch.column("turn_rewards").to_pylist() == [[1.0]] * 4


def test_episode_columns_come_together_and_aligned(engine, tok):
    batch, _ = rollout(engine, tok, "TwoTurns")
    with pytest.raises(SchemaError, match="episode column 'num_turns'"):
        check_batch(batch.drop_columns(["num_turns"]), "rollout")
    short = list_array([m[:-1] for m in batch.column("loss_mask").to_pylist()], pa.int8())
    with pytest.raises(SchemaError, match="'loss_mask' is not aligned"):
        check_batch(batch.set_column(batch.schema.get_field_index("loss_mask"), "loss_mask", short),
                    "rollout")
    with pytest.raises(SchemaError, match="unexpected column 'loss_mask'"):
        check_batch(prompts(tok).append_column("loss_mask", short.slice(0, 2)), "prompt")


def masked_batch() -> pa.RecordBatch:
    """Two episodes: row 0 has 5 response tokens, the 3rd and 4th an observation; row 1 has 3, the 2nd."""
    responses, masks = [[10, 11, 12, 13, 14], [20, 21, 22]], [[1, 1, 0, 0, 1], [1, 0, 1]]
    return pa.record_batch({
        "prompt_id": pa.array([1, 2], pa.int64()), "prompt": ["", ""],
        "prompt_tokens": list_array([[3, 4], [5]], pa.int32()), "sample_index": pa.array([0, 0], pa.int32()),
        "response": ["", ""], "response_tokens": list_array(responses, pa.int32()),
        "response_logprobs": list_array([[-1.0, -1.0, 0, 0, -1.0], [-1.0, 0, -1.0]], pa.float32()),
        "policy_version": pa.array([0, 0], pa.int64()), "finish_reason": ["stop", "stop"],
        "loss_mask": list_array(masks, pa.int8()), "num_turns": pa.array([2, 2], pa.int32()),
        "turn_rewards": list_array([[0.0, 1.0], [0.0, -2.0]], pa.float32()),
        "env_error": pa.array([None, None], pa.string()), "reward": pa.array([1.0, -2.0], pa.float32()),
    })


def test_the_response_mask_is_the_policys_tokens_and_rewards_sit_on_the_last_of_them():
    seq = sequences_from_batch(check_batch(masked_batch(), "scored"), 0)
    close(seq.response_mask, [[1, 1, 0, 0, 1], [1, 0, 1, 0, 0]])
    assert seq.input_ids[0].tolist() == [3, 4, 10, 11, 12, 13, 14]  # observations stay in the context
    m = t([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]])  # an episode whose last tokens were an observation
    close(token_level_rewards(t([1.0, -2.0]), m * t([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])),
          [[0, 1, 0, 0, 0], [-2, 0, 0, 0, 0]])


@pytest.mark.parametrize("agg, expected", [
    # advantages A = +1 on row 0 (3 policy tokens), −2 on row 1 (2); on-policy the ratio is 1, ℓ_t = −A_t
    ("token_mean", 0.2),  # (−1·3 + 2·2) / 5 policy tokens
    ("seq_mean_token_mean", 0.5),  # (−3/3 + 4/2) / 2 rows
    ("seq_mean_token_sum_norm", 0.125),  # (−3 + 4) / (2 rows × norm_len 4)
])
def test_masked_tokens_never_reach_the_loss(agg, expected):
    seq = sequences_from_batch(masked_batch(), 0)
    mask = seq.response_mask
    close(batch_counts(mask), [5, 2, 2])  # policy tokens, rows with one, rows
    # garbage where the mask is 0: huge log-probs and advantages on the observation tokens and the padding
    logp = torch.where(mask > 0, t([[-1.0] * 5, [-1.0] * 5]), t(1e3)).requires_grad_()
    adv = torch.where(mask > 0, t([[1.0] * 5, [-2.0] * 5]), t(-1e4))
    obj = Objective(AlgoConfig(loss_agg=agg), 1.0, 4)
    loss = obj.policy_loss(logp, None, None, None, seq.rollout_logprobs, adv, mask, batch_counts(mask),
                           Tally())
    close(loss.detach(), expected)
    loss.backward()
    assert (logp.grad[mask == 0] == 0).all()  # an observation token's log-prob has no gradient at all
    d = {"token_mean": 5.0, "seq_mean_token_mean": None, "seq_mean_token_sum_norm": 8.0}[agg]
    if d is not None:
        close(logp.grad, (-adv * mask / d).tolist())  # ∂ℓ/∂logp_t = −A_t · m_t / D
