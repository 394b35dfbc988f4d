"""Reward-model training, data and evaluation, in one place (the model kinds themselves are in
alignray.rewards).

  config.py       RewardTrainConfig — the one config: the recipe, and for an `alignray rm train` run its
                  data and ranks
  sources.py      data (`builtin:` sets, files, hub) and backbones (`gt:all-MiniLM-L6-v2`), checked before
                  Ray starts
  loop.py         train_reward_model / fit / reward_loss: the loop, in process or on one DeepSpeed rank
  causal.py       resolving a causal recipe (cf_weight, mmd_condition estimate, mmd_lambda auto) before its
                  final fit
  auto_lambda.py  the held-out λ sweep of `mmd_lambda: auto`
  run.py          the `alignray rm train` driver: ranks on Ray, the progress bar, evaluation (imports ray)
  cli.py          `alignray rm eval` and `alignray rm bench` (the benchmarks live in benchmarks/rm_bench)
  pairs.py, preference_data.py   PreferenceData and its loaders (JSONL, Parquet, hub, `builtin:`)
  builtin.py, text_grammar.py    the built-in example data: a seeded grammar of restaurant advice
  mmd.py, objectives.py, evaluate.py, backbones.py   the MMD penalty, the pairwise objective, diagnostics,
                                                     trunks

The Ray actor of one rank is `alignray.actors.rm_learner.RewardLearner`; ranks are launched and joined by
`alignray.actors.ranks.RankGroup`, the launcher of the RL learner too.
"""

from alignray.rm.config import RankConfig, RewardTrainConfig, load_train_config

__all__ = ["RankConfig", "RewardTrainConfig", "load_train_config"]
