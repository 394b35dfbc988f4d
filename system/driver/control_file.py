"""RUN_DIR/control.yaml: scale requests for a run on this machine, written by `alignray scale`, read by the
run at the start of its next step. The one definition of its keys; a run on a cluster takes the same requests
through its control actor (alignray.actors.control) instead."""

from __future__ import annotations

from pathlib import Path

import yaml

CONTROL_FILE = "control.yaml"
KEYS = {"rollout": "rollout_workers", "reward": "reward_workers", "rm_server": "rm_servers"}
"""pool role → the file's key."""


def write_request(run_dir: Path, wanted: dict[str, int]) -> Path:
    """Merge `wanted` ({role: size}) into the file, atomically (the run never reads half a file)."""
    path = run_dir / CONTROL_FILE
    current = yaml.safe_load(path.read_text()) if path.is_file() else {}
    current = current if isinstance(current, dict) else {}
    current.update({KEYS[role]: n for role, n in wanted.items()})
    tmp = path.with_name(CONTROL_FILE + ".tmp")
    tmp.write_text(yaml.safe_dump(current))
    tmp.replace(path)
    return path


def read_request(path: Path) -> dict[str, int]:
    """{role: size} from the file; ValueError (or yaml.YAMLError) when it holds no valid request."""
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping, got {type(data).__name__}")
    roles = {key: role for role, key in KEYS.items()}
    wanted = {roles[k]: int(v) for k, v in data.items() if k in roles}
    if not wanted or any(n < 1 for n in wanted.values()):
        raise ValueError("expected 'rollout_workers: N', 'reward_workers: M' and/or 'rm_servers: K', "
                         "each >= 1")
    return wanted
