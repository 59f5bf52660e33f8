# 4-GPU call (#3): the Ulysses exchange with a token's Q, K and V side by side (one all-to-all per sample and
# direction instead of one list all-to-all per tensor): cuDNN on the interleaved rows (probe), then
# cfg 2 x ulysses 2, ulysses 4 and ulysses 2 at 49 frames against 1 GPU in the same call, eager outputs checked.
# Carry: .whl
# Ran 2026-11-28 02:38 on 4x H100: cuDNN on interleaved rows 2.176 vs 2.162 ms dense (599 vs 603 TFLOP/s),
# bit-equal, output token-major; 1 GPU 977.2 ms, cfg 2 x ulysses 2 282.7 (3.457x), ulysses 4 294.6 (3.317x),
# ulysses 2 544.1 (1.796x), eager bit-equal; records docs/bench/interleaved_attention_h100.json,
# docs/bench/dit_interleaved_49f_h100x4.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 60 python3 scripts/gpu/interleaved_attention_probe.py "$OUT/interleaved_attention.json" 2>&1 | grep -v -i warn
timeout 500 python3 -m mochi_runtime.bench dit --layouts ${LAYOUTS:-2x2x1,1x4x1,1x2x1} --no-diffusers --warmup 1 \
  --iters 5 --json "$OUT/dit_interleaved_49f_4gpu.json" 2>&1 | grep -v -i warn | tail -8
