# 4-GPU call (#3): A/B of the Ulysses exchange in one call: the list all-to-alls per tensor (the tree before
# scripts/gpu/interleaved.patch) and the Q/K/V-interleaved one message per sample (the patch), cfg 2 x ulysses 2
# at 49 frames, each run with its own 1-GPU baseline. Carry: .whl
# Ran 2026-11-28 02:43 on 4x H100 (the machine of interleaved_4gpu.sh): lists 280.0 (3.490x), interleaved 280.3
# (3.492x), lists 281.2 (3.475x), interleaved 277.6 (3.523x); iterations 271.5-320.9, the 4th slow in most runs;
# records docs/bench/dit_ab_{lists,interleaved}_49f_h100x4_{1,2}.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
for round in 1 2; do
  patch -s -R -p1 < scripts/gpu/interleaved.patch
  timeout 140 python3 -m mochi_runtime.bench dit --layouts ${LAYOUTS:-2x2x1} --no-diffusers --warmup 1 --iters 5 \
    --json "$OUT/dit_lists_49f_4gpu_$round.json" 2>&1 | grep -v -i warn | grep "^1x1x1\|^2x2x1\|^1x4"
  patch -s -p1 < scripts/gpu/interleaved.patch
  timeout 140 python3 -m mochi_runtime.bench dit --layouts ${LAYOUTS:-2x2x1} --no-diffusers --warmup 1 --iters 5 \
    --json "$OUT/dit_interleaved_49f_4gpu_$round.json" 2>&1 | grep -v -i warn | grep "^1x1x1\|^2x2x1\|^1x4"
done
