# 2-GPU call (#3/#9): the present defaults (fused QK-norm + RoPE pass) at 49 frames on 2 GPUs: ulysses 2 (the
# exchange layout written by the fused kernel) and cfg 2, with the eager outputs against 1 GPU. Carry: .whl
# Ran 2026-11-28 00:43 on 2x H200: 1 GPU 972.5 ms, ulysses 2 530.4 (1.833x), cfg 2 482.9 (2.014x), eager bit-equal;
# record docs/bench/dit_qk_rope_49f_h200x2.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 400 python3 -m mochi_runtime.bench dit --layouts ${LAYOUTS:-1x2x1,2x1x1} --no-diffusers --warmup 1 --iters 3 \
  --json "$OUT/dit_qk_rope_49f_2gpu.json" 2>&1 | grep -v -i warn | tail -6
