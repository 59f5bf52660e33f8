# 8-GPU call (#8), for when an nvidia-h100-x8 / nvidia-h200-x8 kind is lent (none was, through 2026-11-27).
# One call: per-step latency at 848x480x49 of 1 GPU, cfg 2 (2), cfg 2 x ulysses 2 (4) and the four 8-GPU
# layouts, each checked against 1 GPU in the same invocation; then 163 frames for the two ring-1 8-GPU layouts.
# The Triton generation across all 8 is the second call: scripts/gpu/serving_ring_4gpu.sh with
#   DEPLOYMENTS='0,1,2,3,4,5,6,7@2x4x1' (carry .whl .gpu).
# On CPU the same four 8-rank layouts run in tests/test_parallel.py and through tritonserver in
# tests/test_triton_eight_ranks.py. Carry: .whl
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 380 python3 -m mochi_runtime.bench dit --frames 49 --layouts 2x1x1,2x2x1,2x4x1,1x8x1,2x2x2,1x4x2 \
  --no-diffusers --warmup 1 --iters 3 --json "$OUT/dit_8gpu_49f.json" 2>&1 | grep -v -i warn | tail -9
timeout 200 python3 -m mochi_runtime.bench dit --frames 163 --layouts 2x4x1,1x8x1 --no-diffusers --warmup 1 \
  --iters 2 --json "$OUT/dit_8gpu_163f.json" 2>&1 | grep -v -i warn | tail -4
