"""RL algorithm math as small pure torch functions (no ray, no transformers): `estimators` (the registry,
torch-free), `advantages`, `losses` (per-token policy and value losses), `kl`, `logprobs`,
`dynamic_sampling` (DAPO's group filter, torch-free: the reward workers run it), `overlong` (DAPO's overlong
filter and penalty)."""
