# 4-GPU call (#3): the present defaults at 49 frames, each layout and the 1-GPU baseline timed two ways in the same
# processes: single steps each followed by a sync (as every earlier record) and 5 steps back to back (as the
# sampler runs them; the host's launch of a step's first kernels is then hidden behind the previous step).
# Carry: .whl
# Ran 2026-11-28 00:23 on 4x H100: 1 GPU 998.3 ms (998.7 back to back); cfg 2 x ulysses 2 283.3 ms, 3.524x
# (287.1, 3.479x); ulysses 4 303.9, 3.284x (307.6, 3.246x); record docs/bench/dit_chained_49f_h100x4.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 560 python3 -m mochi_runtime.bench dit --layouts ${LAYOUTS:-2x2x1,1x4x1} --no-diffusers --warmup 1 --iters 5 \
  --json "$OUT/dit_chained_49f_4gpu.json" 2>&1 | grep -v -i warn | tail -8
