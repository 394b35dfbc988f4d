"""Quiet by default: known warnings filtered, Ray's default-auth note dropped (its 'disabled' warning kept),
the step counter readable on a pipe, `alignray --version`."""

from __future__ import annotations

import logging
import warnings

import pytest

from alignray.cli import Progress, main, package_version
from alignray.quiet import KNOWN_WARNINGS, quiet, quiet_driver, verbose


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert (capsys.readouterr().out.strip() == f"alignray {package_version()}"
            and package_version()[0].isdigit())


def test_known_warnings_are_filtered_and_others_are_not():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet()
        warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated. Please use ...",
                      FutureWarning, stacklevel=1)
        warnings.warn("something new and worth reading", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something new and worth reading"]
    assert all(issubclass(category, Warning) for category, _ in KNOWN_WARNINGS)


def test_driver_drops_only_the_default_token_auth_note(caplog, monkeypatch):
    monkeypatch.delenv("ALIGNRAY_VERBOSE", raising=False)
    assert not verbose()
    quiet_driver()
    quiet_driver()  # idempotent: one filter
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    assert len(log.filters) == 1
    with caplog.at_level(logging.WARNING):
        log.warning("Token authentication is enabled for this Ray cluster. "
                    "Set RAY_AUTH_MODE=disabled to opt out.")
        log.warning("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
    assert [r.getMessage()[:38] for r in caplog.records] == ["Token authentication is disabled for t"]


def test_progress_on_a_pipe_is_a_plain_line_every_five_percent(capsys):
    progress = Progress(total=40, initial=0, enabled=True)  # pytest's stderr is not a terminal
    for step in range(1, 41):
        progress.show({"step": step, "reward/mean": 0.5, "throughput/samples_per_s": 10.0,
                       "policy_version": step - 1})
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 20 and lines[0] == "step 2/40 reward=0.500 samples/s=10.0 v=1"
    assert lines[-1].startswith("step 40/40 ")
    quiet_bar = Progress(total=3, initial=0, enabled=False)
    quiet_bar.show({"step": 3, "reward/mean": 0.5, "throughput/samples_per_s": 10.0, "policy_version": 2})
    assert capsys.readouterr().err == ""
