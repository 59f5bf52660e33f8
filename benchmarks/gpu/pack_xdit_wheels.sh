#!/usr/bin/env bash
# Wheels for the xDiT side-by-side (`--attention-engine xdit`, `bench dit --engines ours,xdit`) on the GPU machines
# (Python 3.12, no network): xfuser 0.7.0 and what its USP imports that the machines' image may lack. ~11 MB, into
# .whl-xdit/; benchmarks/gpu/env.sh installs them into their own directory, after the image's packages on the path.
set -euo pipefail
rm -rf .whl-xdit && mkdir -p .whl-xdit
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl-xdit \
  xfuser==0.7.0 yunchang==0.6.4 distvae==0.1.0 einops==0.8.2 sentencepiece==0.2.3 pyyaml==6.0.4 pillow==13.0.0
ls -la .whl-xdit
