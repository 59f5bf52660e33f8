# 4-GPU call (#3/#9): the present defaults (fused QK-norm + RoPE pass) at 49 frames on 4 GPUs: cfg 2 x ulysses 2
# and ulysses 4 (the exchange layout written by the fused kernel), eager outputs against 1 GPU. Carry: .whl
# Ran 2026-11-28 00:47 on 4x H200: 1 GPU 972.3 ms, cfg 2 x ulysses 2 271.1 (3.586x), ulysses 4 291.9 (3.331x),
# eager bit-equal; record docs/bench/dit_qk_rope_49f_h200x4.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 400 python3 -m mochi_runtime.bench dit --layouts ${LAYOUTS:-2x2x1,1x4x1} --no-diffusers --warmup 1 --iters 3 \
  --json "$OUT/dit_qk_rope_49f_4gpu.json" 2>&1 | grep -v -i warn | tail -6
