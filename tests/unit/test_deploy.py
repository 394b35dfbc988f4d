"""Deploy files stay valid: run configs load through the real validator, and token auth stays on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from alignray.config import load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.parametrize("path", sorted((DEPLOY / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_run_configs_validate(path):
    load_config(path)


def test_shipped_quickstart_matches_the_preset():
    assert load_config(DEPLOY / "configs" / "quickstart.yaml") == load_config()


def test_kuberay_manifests_keep_token_auth_and_loopback_dashboard():
    cluster = yaml.safe_load((DEPLOY / "kuberay" / "raycluster.yaml").read_text())["spec"]
    job = yaml.safe_load((DEPLOY / "kuberay" / "rayjob.yaml").read_text())["spec"]["rayClusterSpec"]
    for spec in (cluster, job):
        assert spec["authOptions"]["mode"] == "token"
        assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    launcher = (DEPLOY / "cluster.yaml").read_text()
    assert launcher.count("RAY_AUTH_MODE=token ray start") == 2


@pytest.mark.parametrize("path", sorted((DEPLOY / "configs" / "rm").glob("*.yaml")), ids=lambda p: p.name)
def test_rm_configs_validate(path):
    from alignray.rm import load_train_config

    # data and backbone resolve: tests/unit/test_rm_config.py
    assert load_train_config(path).learner.num_ranks >= 1
