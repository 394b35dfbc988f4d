#!/usr/bin/env bash
# Build (and with --push, push) the two alignray images from the repository root:
#   $IMAGE:$VERSION       CPU   (deploy/Dockerfile)       — laptops, CI, CPU-only clusters
#   $IMAGE:$VERSION-gpu   CUDA  (deploy/Dockerfile.gpu)   — what deploy/kuberay/*.yaml run
# IMAGE defaults to alignray/alignray, VERSION to pyproject's version. To use your registry:
#   IMAGE=ghcr.io/you/alignray bash deploy/images.sh --push   (then set that image in deploy/kuberay/*.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-alignray/alignray}
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)}
docker build -f deploy/Dockerfile -t "$IMAGE:$VERSION" .
docker build -f deploy/Dockerfile.gpu -t "$IMAGE:$VERSION-gpu" .
if [ "${1:-}" = "--push" ]; then
  docker push "$IMAGE:$VERSION"
  docker push "$IMAGE:$VERSION-gpu"
fi
