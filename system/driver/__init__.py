"""The driver side of a run: the controller loop and what it keeps (ledger, faults, run directory, metrics),
scaling, and the checks before Ray starts. Only controller, shards, scaling and run_commands import ray."""
