"""Generation: the engine interface and its backends (hf, lean_decode, vllm), and how weights reach the
engines (weights, transports). The actor is actors/rollout.py."""
