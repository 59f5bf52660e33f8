# 4-GPU call (#3): the defaults as they now are (token-major Ulysses exchange on ring-1 layouts; token-major Q/K/V
# on one GPU, which also speeds up the baseline) at 49 frames, with rank 0's kernels (NCCL now counted once) and
# every eager output against an fp32 run of the 1-GPU weights. Carry: .whl
# Ran 2026-11-27 21:55 (4x H200): baseline 995.1 ms; 2x2x1 277.3 ms (3.589x), 1x4x1 297.5 (3.345x), 2x1x2 294.1
# (3.383x); record docs/bench/dit_defaults_49f_h200x4.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 560 python3 -m mochi_runtime.bench dit --layouts ${LAYOUTS:-2x2x1,1x4x1,2x1x2} --profile --fp32-reference \
  --no-diffusers --warmup 1 --iters 3 --json "$OUT/dit_defaults_49f_4gpu.json" 2>&1 | grep -v -i warn | tail -8
