"""RL algorithm math as small pure torch functions (no ray, no transformers): `estimators` (the registry,
torch-free), `advantages`, `losses` (per-token policy and value losses), `kl`, `logprobs`."""
