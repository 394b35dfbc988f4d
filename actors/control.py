"""RunControl: a small named actor of each run, the way in for `alignray scale` and `alignray status` from
another terminal or machine of the cluster (`RAY_ADDRESS`). It holds what the controller published last and
the scale requests it has not yet taken; it owns no data and no CPU (num_cpus=0), and dies with the run.
"""

from __future__ import annotations

from pathlib import Path

import ray

NAMESPACE = "alignray"


def control_name(run_dir: str | Path) -> str:
    """The run's control actor name: from the run directory's last part (what users type after
    `--run-dir`)."""
    return f"alignray-control-{Path(run_dir).resolve().name}"


@ray.remote(num_cpus=0)
class RunControl:
    def __init__(self) -> None:
        self.status: dict = {}
        self.calls: list[dict] = []
        self.requests: list[dict] = []

    def request(self, wanted: dict[str, int]) -> dict:
        """Queue a scale request ({"rollout": N, "reward": M}); taken at the start of the next step."""
        self.requests.append(dict(wanted))
        return {"queued": wanted, "step": self.status.get("step")}

    def take_requests(self) -> list[dict]:
        taken, self.requests = self.requests, []
        return taken

    def publish(self, status: dict) -> None:
        self.status = status

    def publish_calls(self, calls: list[dict]) -> None:
        """The driver's calls in flight (its watchdog publishes them every second while any runs)."""
        self.calls = calls

    def get_status(self) -> dict:
        return {**self.status, "calls": self.calls,
                "queued_requests": list(self.requests)}


def connect(address: str) -> None:
    """Join the run's cluster from another process. A loopback address stays loopback (Ray would otherwise
    rewrite 127.0.0.1 to this machine's IP, where a loopback-only head does not listen)."""
    host = address.split("://")[-1].rsplit(":", 1)[0]
    if host in ("127.0.0.1", "localhost", "::1"):
        import ray._private.ray_constants as ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")


def start_control(run_dir: str | Path):
    """The run's control actor. Non-detached, it dies with its run; a live one of the same name belongs to
    another run with the same directory name, which keeps it (this run then has none and says so: use
    RUN_DIR/control.yaml)."""
    name = control_name(run_dir)
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return RunControl.options(name=name, namespace=NAMESPACE).remote()
    print(f"alignray: warning: another live run is named {Path(run_dir).resolve().name!r}; this run takes "
          f"scale requests through {Path(run_dir) / 'control.yaml'} only", flush=True)
    return RunControl.remote()
