"""Loading any saved reward model: the one place that knows every kind (`alignray_rm.json` names it).

The base module (`models.py`) imports none of the kinds; each kind's module imports the base; this module
imports them all. So there is no import cycle, and a new kind is added here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alignray.rewards.ensemble_models import EnsembleRewardModel
from alignray.rewards.haf_model import HafRewardModel
from alignray.rewards.heads_model import HeadsRewardModel
from alignray.rewards.models import RM_CONFIG_FILE, RewardModel, ScalarRewardModel

KINDS: dict[str, type[RewardModel]] = {cls.kind: cls for cls in (ScalarRewardModel, HeadsRewardModel,
                                                                 HafRewardModel,
                                                                  EnsembleRewardModel)}


def load_reward_model(path: str | Path, trust_remote_code: bool = False,
                      device: str | torch.device | None = None) -> RewardModel:
    """Load any saved reward model (dispatch on `kind` in alignray_rm.json), or a plain HF
    sequence-classification directory as a scalar model. Returned in eval mode, on `device` if given."""
    path = Path(path)
    config_file = path / RM_CONFIG_FILE
    if config_file.exists():
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config_file}: not valid JSON ({exc})") from exc
        kinds = KINDS
        kind = config.get("kind")
        if kind not in kinds:
            raise ValueError(f"{config_file}: field 'kind' is {kind!r}; expected one of {sorted(kinds)}")
        if kind == EnsembleRewardModel.kind:  # a composite: its members are saved reward models of any kind
            members = [load_reward_model(path / name, trust_remote_code) for name in config["members"]]
            model = EnsembleRewardModel.from_config(members, config)
        else:
            model = kinds[kind].load(path, config, trust_remote_code=trust_remote_code)
    elif (path / "config.json").exists():
        model = ScalarRewardModel.load(path, {"subfolder": ".", "trained_with": "unknown"}, trust_remote_code)
    else:
        raise FileNotFoundError(f"{path}: no {RM_CONFIG_FILE} and no HF config.json; "
                                "not a reward model directory")
    if device is not None:
        model.to(device)
    return model.eval()
