"""The `alignray` command.

  alignray train [--config run.yaml] [--run-dir DIR | --resume DIR] [section.field=value ...]
  alignray rm train [--config rm.yaml] [--run-dir DIR] [field=value ...]   (default: the built-in example)
  alignray rm eval --model DIR --data FILE | rm bench NAME [--out results.json]
  alignray config [--config run.yaml] [overrides ...]     print the resolved config and exit
  alignray scale RUN_DIR --rollout N [--reward M] [--rm-server K]   resize a running run's pools
  alignray status RUN_DIR [--json]                        step, pools, throughput, recent faults
  alignray --version

Quiet by default: workers' output (library logs, Ray's) reaches the terminal only with `train --verbose`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from alignray.config import dump_config, load_config
from alignray.driver.stop import shutdown_ray, stop_on_signals, stopped_by
from alignray.errors import AlignrayError
from alignray.quiet import VERBOSE_ENV, quiet_driver


class Progress:
    """The step counter: a tqdm bar on a terminal, kept on its own line (anything the driver prints meanwhile
    goes above it); on a pipe or file, a plain line about every 5% of the run, so logs stay readable."""

    def __init__(self, total: int, initial: int, enabled: bool):
        from tqdm import tqdm

        self.total, self.every = total, max(1, total // 20)
        self.tty = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self.bar = tqdm(total=total, initial=initial, desc="alignray train", unit="step", dynamic_ncols=True,
                        file=sys.stderr) if self.tty else None

    def own_line(self) -> contextlib.AbstractContextManager:
        if self.bar is None:
            return contextlib.nullcontext()
        from tqdm.contrib import DummyTqdmFile

        stack = contextlib.ExitStack()
        stack.enter_context(contextlib.redirect_stdout(DummyTqdmFile(sys.stdout)))
        stack.enter_context(contextlib.redirect_stderr(DummyTqdmFile(sys.stderr)))
        return stack

    def show(self, m: dict) -> None:
        post = {"reward": f"{m['reward/mean']:.3f}", "samples/s": f"{m['throughput/samples_per_s']:.1f}",
                "v": m["policy_version"]}
        if self.bar is not None:
            self.bar.n = m["step"]  # not update(1): a recovered learner group may roll the step back
            self.bar.set_postfix(post)
        elif self.enabled and (m["step"] % self.every == 0 or m["step"] == self.total):
            print(f"step {m['step']}/{self.total} " + " ".join(f"{k}={v}" for k, v in post.items()),
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _train(args: argparse.Namespace) -> int:
    from alignray.driver.preflight import preflight
    from alignray.driver.runlog import latest_checkpoint, new_run_dir
    from alignray.driver.stop import stopped_by, where_stopped

    if args.resume:
        run_dir = Path(args.resume)
        if latest_checkpoint(run_dir) is None:
            raise AlignrayError(f"--resume {run_dir}: no checkpoints/step_N/controller.json to resume from")
        cfg = load_config(args.config or run_dir / "config.yaml", args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
        run_dir = Path(args.run_dir) if args.run_dir else new_run_dir()
    preflight(cfg)  # model, tokenizer, reward functions, prompt file: checked here, before Ray starts
    from alignray.actors.cluster import check_local_capacity

    check_local_capacity(cfg, cfg.train.ray_address or os.environ.get("RAY_ADDRESS"))
    from alignray.driver.controller import (
        Controller,  # imports Ray: after the checks, so they answer in a second
    )

    controller = progress = None
    try:
        controller = Controller(cfg, run_dir, resume=bool(args.resume))
        progress = Progress(cfg.train.steps, controller.step, cfg.train.progress)
        with progress.own_line():
            history = controller.run(on_step=progress.show)
    except BaseException as exc:
        stop = stopped_by(exc)
        if stop is None:  # an error: the run's actors are closed, the error is reported by main
            if controller is not None:
                controller.close()
            raise
        stop.where = where_stopped(run_dir, controller.step if controller else 0, cfg.train.steps)
        if controller is not None:
            controller.close(stopping=True)
        raise stop from None
    else:
        controller.close()
    finally:
        if progress is not None:
            progress.close()
    if history:
        k = max(1, len(history) // 5)
        first = sum(m["reward/mean"] for m in history[:k]) / k
        last = sum(m["reward/mean"] for m in history[-k:]) / k
        print(f"mean reward over the first {k} steps {first:.4f} → last {k} steps {last:.4f}")
    print(f"run directory: {run_dir}")
    return 0


def _config(args: argparse.Namespace) -> int:
    print(dump_config(load_config(args.config, args.overrides)), end="")
    return 0


def _rm(args: argparse.Namespace) -> int:
    import alignray.rm.cli as rm_cli

    if args.rm_command == "eval":
        rm_cli.rm_eval_main(args.model, args.data, args.out, baseline=args.baseline, device=args.device)
    elif args.rm_command == "bench":
        rm_cli.rm_bench_main(args.name, args.out, args.quick)
    else:
        from alignray.rm.run import rm_train_main

        rm_train_main(args.config, args.overrides, args.run_dir)
    return 0


def _scale(args: argparse.Namespace) -> int:
    from alignray.driver.run_commands import scale_main

    print(json.dumps(scale_main(args.run_dir, args.rollout, args.reward, args.address, args.rm_server)))
    return 0


def _status(args: argparse.Namespace) -> int:
    from alignray.driver.run_commands import status_main
    from alignray.driver.scaling import format_status

    status = status_main(args.run_dir, args.address)
    print(json.dumps(status, indent=1) if args.json else format_status(status))
    return 0


def package_version() -> str:
    try:
        return version("alignray")
    except PackageNotFoundError:  # running from a checkout that is not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignray",
                                     description="Ray-distributed RLHF with robust reward models")
    parser.add_argument("--version", action="version", version=f"alignray {package_version()}")
    parser.add_argument("--verbose", action="store_true",
                        help="show the workers' and Ray's logs (any command; "
                        "also ALIGNRAY_VERBOSE=1)")
    sub = parser.add_subparsers(dest="command", required=False)
    train = sub.add_parser("train", help="run RL training (default: the quickstart preset)")
    train.add_argument("--config", help="YAML run config (default: the built-in quickstart preset)")
    where = train.add_mutually_exclusive_group()
    where.add_argument("--run-dir", help="output folder (default: a new folder under runs/)")
    where.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    train.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show the workers' and Ray's logs")
    train.add_argument("overrides", nargs="*",
                       help="dotted overrides, e.g. rollout.num_workers=2 algo.name=rloo")
    train.set_defaults(func=_train)
    show = sub.add_parser("config", help="print the resolved config")
    show.add_argument("--config")
    show.add_argument("overrides", nargs="*")
    show.set_defaults(func=_config)
    scale = sub.add_parser("scale", help="resize a running run's rollout / reward pools")
    scale.add_argument("run_dir", metavar="RUN_DIR")
    scale.add_argument("--rollout", type=int, metavar="N", help="rollout workers wanted")
    scale.add_argument("--reward", type=int, metavar="M", help="reward workers wanted")
    scale.add_argument("--rm-server", type=int, metavar="K",
                       help="reward-model servers wanted (reward.service)")
    scale.add_argument("--address", help="Ray address of the run's cluster (default: RAY_ADDRESS; none: this "
                       "machine, through RUN_DIR/control.yaml)")
    scale.set_defaults(func=_scale)
    status = sub.add_parser("status", help="a running run's step, pools, throughput and recent faults")
    status.add_argument("run_dir", metavar="RUN_DIR")
    status.add_argument("--address", help="Ray address of the run's cluster (default: RAY_ADDRESS)")
    status.add_argument("--json", action="store_true", help="print the raw status")
    status.set_defaults(func=_status)
    rm = sub.add_parser("rm", help="reward models: train, evaluate, synthetic benchmarks")
    rm_sub = rm.add_subparsers(dest="rm_command", required=True)
    rm_train = rm_sub.add_parser("train",
                                 help="train a reward model on Ray with DeepSpeed ranks (default: the "
                                 "built-in example)")
    rm_train.add_argument("--config", help="YAML reward-model config (default: the built-in example, "
                          "system/presets/rm-quickstart.yaml)")
    rm_train.add_argument("--run-dir", help="output folder (default: a new folder under runs/rm/)")
    rm_train.add_argument("overrides", nargs="*",
                          help="dotted overrides, e.g. kind=bt epochs=2 learner.num_ranks=1")
    rm_eval = rm_sub.add_parser("eval", help="accuracy, calibration, spurious correlations of a reward model")
    rm_eval.add_argument("--model", required=True)
    rm_eval.add_argument("--data", required=True)
    rm_eval.add_argument("--out", help="also write the results as JSON here")
    rm_eval.add_argument("--baseline", help="a BT reward model: warn where the bias gap flips sign and grows")
    rm_eval.add_argument("--device", default="auto",
                         help="auto (the GPU when CUDA is available, else the CPU), cpu, cuda or cuda:N")
    rm_bench = rm_sub.add_parser("bench", help="synthetic benchmark with known ground truth")
    rm_bench.add_argument("name")
    rm_bench.add_argument("--out", help="write the results as JSON here")
    rm_bench.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    rm.set_defaults(func=_rm)
    return parser


def _user_error(exc: BaseException) -> AlignrayError | None:
    """The AlignrayError behind `exc`, also when it was raised inside a Ray actor."""
    seen = exc
    for _ in range(5):
        if isinstance(seen, AlignrayError) and type(seen).__module__.startswith("alignray"):
            return seen
        cause = getattr(seen, "cause", None) or seen.__cause__
        if cause is None:
            return seen if isinstance(seen, AlignrayError) else None
        seen = cause
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:  # `alignray` alone runs the quickstart
        args = build_parser().parse_args(["--verbose", "train"] if args.verbose else ["train"])
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    quiet_driver()
    stop_on_signals()
    try:
        return args.func(args)
    except BaseException as exc:  # noqa: BLE001 - a stop and user errors are one line, anything else a traceback
        stop = stopped_by(exc)
        if stop is not None:  # SIGINT / SIGTERM (inside a Ray wait it arrives wrapped in Ray's SystemError)
            print(stop.line(), file=sys.stderr, flush=True)
            shutdown_ray(stop.exit_code)
            return stop.exit_code
        err = _user_error(exc) if isinstance(exc, Exception) else None
        if err is None:
            raise
        print(f"alignray: error: {err}", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(main())
