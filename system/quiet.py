"""Quiet by default: known, harmless library noise is filtered in the driver and in every Ray worker.

Each Ray worker runs `quiet()` at start (`runtime_env.worker_process_setup_hook`), before any actor imports
torch, transformers or DeepSpeed. Workers' output reaches the terminal only with `alignray train --verbose`
(ALIGNRAY_VERBOSE=1): errors travel back as exceptions and print as one line either way.
"""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "ALIGNRAY_VERBOSE"
SETUP_HOOK = "alignray.quiet.quiet"

# (category, start of the message): warnings we know to be harmless and to repeat on every rank and step.
KNOWN_WARNINGS: list[tuple[type[Warning], str]] = [
    (FutureWarning, r"`torch\.distributed\.all_gather_into_tensor` is deprecated"),
    (FutureWarning, r"`torch\.distributed\.reduce_scatter_tensor` is deprecated"),
    (FutureWarning, r"`torch\.distributed\._all_gather_base` is a private function"),
    (FutureWarning, r"`torch\.distributed\._reduce_scatter_base` is a private function"),
    (UserWarning, r"The given NumPy array is not writable"),  # zero-copy Arrow views, read-only by design
    (UserWarning, r"The given buffer is not writable"),
    # mlflow's SQL store, on SQLAlchemy 2
    (DeprecationWarning, r"The ``noload`` loader strategy is deprecated"),
]
# Variables read when the libraries are imported: progress bars of save_pretrained, info-level chatter.
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet() -> None:
    """Filter the known warnings in this process; also the Ray worker setup hook, so it takes no arguments."""
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


class _DropMessages(logging.Filter):
    def __init__(self, *starts: str):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def quiet_driver() -> None:
    """The driver's share: the known warnings, and Ray's note that token auth is on by default (it is what we
    want; the warning when it is *off* still shows)."""
    quiet()
    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not verbose() and not any(isinstance(f, _DropMessages) for f in auth.filters):
        auth.addFilter(_DropMessages("Token authentication is enabled"))
