"""Where each actor runs and what its device can do: the placement rule, `--device` of the commands, and the
peak FLOP/s behind the learner's MFU.

Pure functions (no torch import at module level: a reward worker with rule functions only never loads
torch). The rule: an actor given `num_gpus > 0` runs on the GPU Ray gave it (Ray sets CUDA_VISIBLE_DEVICES, so
it is the process's current CUDA device, index 0 in that process); where that process has no CUDA, the run
stops with one line naming the field, never a silent CPU fallback.
"""

from __future__ import annotations

from alignray.errors import AlignrayError

PEAK_FLOPS: dict[str, dict[str, float]] = {
    # dense tensor-core peak for bf16/fp16, plain FP32 (no TF32) for float32, per device (SXM parts)
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12},
}
"""Peak FLOP/s by a name that the device name contains (`torch.cuda.get_device_name()`, e.g. "NVIDIA H200")
and the model dtype; `learner.peak_flops` overrides it for any other device."""


def device_for(num_gpus: float, cuda_available: bool, field: str, index: int = 0) -> str:
    """The torch device of an actor that `field` (e.g. "rollout.num_gpus") gave `num_gpus` GPUs.

    num_gpus = 0 → "cpu"; num_gpus > 0 and CUDA available → f"cuda:{index}" (the current device, 0 under Ray's
    CUDA_VISIBLE_DEVICES); num_gpus > 0 without CUDA → AlignrayError naming the field."""
    if num_gpus <= 0:
        return "cpu"
    if not cuda_available:
        raise AlignrayError(f"{field}={num_gpus:g}: this {_role(field)} has no CUDA device "
                            "(torch.cuda.is_available() is False) — install a CUDA build of torch on the GPU "
                            f"nodes, or set {field}=0 to run it on CPU")
    return f"cuda:{index}"


def _role(field: str) -> str:
    section = field.rsplit(".", 1)[0]
    return {"rollout": "rollout worker", "reward": "reward worker", "learner": "learner rank",
            "reward.service": "reward-model server"}.get(section, f"{section} process")


def actor_device(num_gpus: float, field: str) -> str:
    """`device_for` in this process: torch is imported only when the actor was given a GPU."""
    if num_gpus <= 0:
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    return device_for(num_gpus, available, field, torch.cuda.current_device() if available else 0)


def resolve_device(choice: str, cuda_available: bool, flag: str = "--device") -> str:
    """A command's `--device`: "auto" → "cuda:0" when CUDA is available, else "cpu"; "cpu" as is; "cuda" or
    "cuda:N" only where CUDA is available (else an AlignrayError naming the flag)."""
    if choice == "auto":
        return "cuda:0" if cuda_available else "cpu"
    if choice == "cpu":
        return "cpu"
    if choice == "cuda" or (choice.startswith("cuda:") and choice[5:].isdigit()):
        if not cuda_available:
            raise AlignrayError(f"{flag} {choice}: this machine has no CUDA device "
                                f"(torch.cuda.is_available() is False); use {flag} cpu or auto")
        return "cuda:0" if choice == "cuda" else choice
    raise AlignrayError(f"{flag} {choice!r}: choose auto, cpu, cuda or cuda:N")


def peak_flops(device_name: str | None, dtype: str) -> float | None:
    """Peak FLOP/s of a device of that name at `dtype` (from PEAK_FLOPS), None when unknown (CPU: None)."""
    if not device_name:
        return None
    for key, peaks in PEAK_FLOPS.items():
        if key.lower() in device_name.lower():
            return peaks.get(dtype)
    return None


def mfu(params: float, tokens: float, seconds: float, peak: float, devices: int = 1,
        trainable: float | None = None) -> float:
    """Model FLOPs utilisation = (4 · params + 2 · trainable) · tokens / seconds / (peak · devices).

    Per token trained: 2 · params forward, 2 · params backward through the activations, 2 · trainable for the
    weight gradients — 6 · params in full fine-tuning (trainable = params, the default), about 4 · params with
    LoRA, whose frozen base gets no weight gradients. Attention and the frozen forwards (reference, old
    log-probs) are not counted. Over what `devices` devices of peak FLOP/s could do in `seconds`; 0 when
    seconds or peak is not positive."""
    if seconds <= 0 or peak <= 0 or devices <= 0:
        return 0.0
    trainable = params if trainable is None else trainable
    return (4.0 * params + 2.0 * trainable) * tokens / seconds / (peak * devices)
