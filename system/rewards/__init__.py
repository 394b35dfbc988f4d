"""Reward scoring in the RL loop: rule functions, scorers, and every reward-model kind with its loader.
Training reward models lives in alignray.rm."""
