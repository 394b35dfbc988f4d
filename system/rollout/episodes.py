"""Multi-turn episodes (`rollout.env`): one loop for every engine, on top of `RolloutEngine.generate`.

Each of a prompt batch's P × n episodes gets its own environment (`alignray.envs.api`), reset with its prompt
row. Then, turn after turn, the live episodes generate together — one `engine.generate` call per turn, each
episode's context (prompt ⧺ everything so far) as a prompt; on the first turn the n samples of a prompt share
it, so the engine prefills it once — the environments answer each policy turn, and the observation's tokens
(the policy tokenizer's, no special tokens) are appended; an episode that is done, out of turns
(`rollout.max_turns`) or out of tokens (`rollout.max_episode_tokens`) leaves the batch. Every turn holds at
most `rollout.max_new_tokens` policy tokens.

The episode's row: `response_tokens` = every token after the prompt (policy and observation tokens in order),
`loss_mask` = 1 on the policy's tokens and 0 on the observations', `response_logprobs` = the engine's on the
policy's tokens and 0 on the observations', `num_turns`, `turn_rewards` (the environment's reward for each
turn), `env_error`, and `finish_reason`: `stop` (the environment said done), `turns` (max_turns reached),
`length` (the token budget ran out) or `error`. The episode reward (`reward_env`, their sum) is added by the
reward step (alignray.rewards.scorers.EnvironmentScorer).

An environment that fails (raises, returns garbage, hangs past `rollout.env_timeout_s`) ends its episode:
with `reward.on_error: fail` the rollout call raises at once naming the samples, with `quarantine` the episode
is kept with `env_error` set and the reward step drops it into quarantine.jsonl.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from alignray.envs.api import EnvBatch, EnvFailure
from alignray.errors import RewardError
from alignray.schema import FLOATS, TOKENS, check_batch, list_array

MAX_REPORTS = 5


@dataclass
class Episode:
    row: int  # the prompt's row in the prompt batch
    sample: int  # sample_index
    prompt: np.ndarray  # int32 token ids the policy sees first
    prompt_text: str
    tokens: list[np.ndarray] = field(default_factory=list)  # pieces: a policy turn, an observation, ...
    logprobs: list[np.ndarray] = field(default_factory=list)
    mask: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    used: int = 0  # tokens after the prompt
    policy_tokens: int = 0
    finish: str | None = None  # None while live
    error: str | None = None

    def add(self, tokens: np.ndarray, logprobs: np.ndarray | None, policy: bool) -> None:
        tokens = np.asarray(tokens, dtype=np.int32)
        self.tokens.append(tokens)
        self.logprobs.append(np.asarray(logprobs, dtype=np.float32) if policy
                             else np.zeros(len(tokens), np.float32))
        self.mask.append(np.full(len(tokens), 1 if policy else 0, dtype=np.int8))
        self.used += len(tokens)
        self.policy_tokens += len(tokens) if policy else 0

    def fail(self, failure: EnvFailure) -> None:
        self.finish, self.error = "error", failure.message

    def context(self) -> np.ndarray:
        return np.concatenate([self.prompt, *self.tokens]).astype(np.int32)

    def joined(self, pieces: list[np.ndarray], dtype) -> np.ndarray:
        return np.concatenate(pieces).astype(dtype) if pieces else np.zeros(0, dtype)


def turn_seed(seed: int, turn: int) -> int:
    """The sampling seed of a turn: the rollout's own on the first turn, a derived one after."""
    return seed if turn == 0 else zlib.crc32(f"{seed}/turn/{turn}".encode())


def generate_contexts(engine, contexts: list[np.ndarray], sampling, n: int) -> list:
    """One `Completion` per context, in order (`sampling`: the engine's SamplingSettings). When every
    consecutive run of `n` contexts is one context (the samples of a prompt on the first turn), one request
    with n samples per run: the engine prefills it once."""
    if (n > 1 and len(contexts) % n == 0
            and all(np.array_equal(contexts[k], contexts[k - k % n]) for k in range(len(contexts)))):
        groups = engine.generate(contexts[::n], replace(sampling, n=n))
        return [c for group in groups for c in group]
    return [group[0] for group in engine.generate(contexts, replace(sampling, n=1))]


def sample_id(prompt_ids: list[int], e: Episode) -> str:
    return f"prompt_id={prompt_ids[e.row]} sample_index={e.sample}"


def _fail_fast(episodes: list[Episode], prompt_ids: list[int]) -> None:
    """`reward.on_error: fail`: the first failures end the rollout call, one line naming the samples."""
    bad = [e for e in episodes if e.error is not None]
    if not bad:
        return
    reports = [f"{sample_id(prompt_ids, e)}: reward 'env' {e.error}" for e in bad[:MAX_REPORTS]]
    more = f" (and {len(bad) - MAX_REPORTS} more)" if len(bad) > MAX_REPORTS else ""
    raise RewardError("reward failed for " + " | ".join(reports) + more +
                      " — set reward.on_error=quarantine to drop such samples instead")


def run_episodes(engine, tokenizer, rc, prompts: pa.RecordBatch, sampling, on_error: str = "fail"
                 ) -> tuple[list[Episode], dict]:
    """Every episode of `prompts` (`rc`: the `rollout` section; `sampling`: the rollout's SamplingSettings,
    its seed the first turn's) to its end; (episodes in (prompt, sample) order, a few scalars for the
    driver)."""
    n = rc.samples_per_prompt
    prompt_ids = prompts.column("prompt_id").to_pylist()
    texts = prompts.column("prompt").to_pylist()
    column = prompts.column("prompt_tokens")
    fields = [json.loads(f) if f else {} for f in prompts.column("fields").to_pylist()] \
        if "fields" in prompts.schema.names else [{}] * prompts.num_rows
    episodes = [Episode(p, j, column[p].values.to_numpy().astype(np.int32), texts[p] or "")
                for p in range(prompts.num_rows) for j in range(n)]
    encode = lambda text: np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"],  # noqa: E731
                                     dtype=np.int32)
    t_env = time.perf_counter()
    envs = EnvBatch(rc.env, dict(rc.env_kwargs), rc.env_timeout_s,
                    [{**fields[e.row], "prompt_id": prompt_ids[e.row], "prompt": e.prompt_text,
                      "sample_index": e.sample} for e in episodes])
    env_s = time.perf_counter() - t_env
    for i, failure in envs.failed.items():
        episodes[i].fail(failure)
    for i, first in envs.first.items():
        if isinstance(first, EnvFailure):
            episodes[i].fail(first)
        elif first is not None and first != episodes[i].prompt_text:  # the environment's own first text
            episodes[i].prompt, episodes[i].prompt_text = encode(first), first
    try:
        if on_error == "fail":
            _fail_fast(episodes, prompt_ids)
        budget = rc.episode_tokens
        for turn in range(rc.max_turns):
            live = [i for i, e in enumerate(episodes) if e.finish is None]
            if not live:
                break
            limits = {i: min(rc.max_new_tokens, budget - episodes[i].used) for i in live}
            turn_sampling = replace(sampling, max_new_tokens=max(limits.values()),
                                    seed=turn_seed(sampling.seed, turn))
            completions = generate_contexts(engine, [episodes[i].context() for i in live], turn_sampling, n)
            said = {}
            for i, c in zip(live, completions, strict=True):
                episodes[i].add(c.tokens[:limits[i]], c.logprobs[:limits[i]], policy=True)
                said[i] = tokenizer.decode(c.tokens[:limits[i]], skip_special_tokens=True)
            t_env = time.perf_counter()
            answers = envs.step(said)
            env_s += time.perf_counter() - t_env
            for i in live:
                _advance(episodes[i], answers[i], turn == rc.max_turns - 1, budget, encode)
            if on_error == "fail":
                _fail_fast(episodes, prompt_ids)
        t_env = time.perf_counter()
        closing = envs.close([i for i, env in enumerate(envs.envs) if env is not None])
        env_s += time.perf_counter() - t_env
    finally:
        envs.worker.close()  # the batch's environment thread ends with it, whatever happened
    for i, failure in closing.items():
        if episodes[i].error is None:
            episodes[i].fail(failure)
    if on_error == "fail":
        _fail_fast(episodes, prompt_ids)
    return episodes, {"env_s": env_s, "new_tokens": sum(e.policy_tokens for e in episodes),
                      "turns": sum(len(e.rewards) for e in episodes)}


def _advance(e: Episode, answer, last_turn: bool, budget: int, encode) -> None:
    """The environment's answer to a policy turn: the turn's reward, and the episode ends or takes the
    observation."""
    if isinstance(answer, EnvFailure):
        e.rewards.append(float("nan"))
        e.fail(answer)
        return
    observation, reward, done = answer
    e.rewards.append(reward)
    if done:
        e.finish = "stop"
    elif last_turn:
        e.finish = "turns"
    elif e.used >= budget:
        e.finish = "length"
    elif observation:
        tokens = encode(observation)
        if e.used + len(tokens) >= budget:  # no room left for the policy to answer it
            e.finish = "length"
        else:
            e.add(tokens, None, policy=False)


def build_episode_batch(prompts: pa.RecordBatch, episodes: list[Episode], version: int, decode
                        ) -> pa.RecordBatch:
    """The rollout batch of finished episodes: a row per episode, the episode columns filled."""
    take = pa.array([e.row for e in episodes], type=pa.int64())
    tokens = [e.joined(e.tokens, np.int32) for e in episodes]
    batch = pa.record_batch({
        "prompt_id": prompts.column("prompt_id").take(take),
        "prompt": pa.array([e.prompt_text for e in episodes], type=pa.string()),
        "prompt_tokens": list_array([e.prompt for e in episodes], TOKENS.value_type),
        "sample_index": pa.array([e.sample for e in episodes], type=pa.int32()),
        "response": pa.array([decode(t) for t in tokens], type=pa.string()),
        "response_tokens": list_array(tokens, TOKENS.value_type),
        "response_logprobs": list_array([e.joined(e.logprobs, np.float32) for e in episodes],
                                        FLOATS.value_type),
        "policy_version": pa.array(np.full(len(episodes), version, dtype=np.int64)),
        "finish_reason": pa.array([e.finish or "turns" for e in episodes], type=pa.string()),
        "loss_mask": list_array([e.joined(e.mask, np.int8) for e in episodes], pa.int8()),
        "num_turns": pa.array([len(e.rewards) for e in episodes], type=pa.int32()),
        "turn_rewards": list_array([e.rewards for e in episodes], FLOATS.value_type),
        "env_error": pa.array([e.error for e in episodes], type=pa.string()),
    })
    return check_batch(batch, "rollout", "episode rollout")
