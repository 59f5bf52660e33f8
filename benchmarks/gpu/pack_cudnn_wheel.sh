#!/usr/bin/env bash
# The wheel `--attention fp8` needs on the GPU machines (Python 3.12, no network): nvidia-cudnn-frontend, ~12 MB,
# into .whl-cudnn/; benchmarks/gpu/env.sh installs it into its own directory after the image's packages.
set -euo pipefail
rm -rf .whl-cudnn && mkdir -p .whl-cudnn
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl-cudnn \
  nvidia-cudnn-frontend==1.32.0
ls -la .whl-cudnn
