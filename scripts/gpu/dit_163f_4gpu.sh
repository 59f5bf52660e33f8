# 4-GPU call (#3, "163 frames on 4 GPUs too"): the present defaults at 848x480x163 (44,520 visual tokens), cfg 2 x
# ulysses 2 and ulysses 4 against 1 GPU in the same invocation. The last 163-frame record
# (dit_parallel_163f_4xh200.json: 1683.2 ms, 3.70x) predates the token-major exchange. Carry: .whl
# Ran 2026-11-27 22:41 (4x H200): 1 GPU 5927.0 ms; 2x2x1 1565.0 (3.787x), 1x4x1 1596.2 (3.713x); eager bit-equal;
# record docs/bench/dit_defaults_163f_h200x4.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 560 python3 -m mochi_runtime.bench dit --frames 163 --layouts ${LAYOUTS:-2x2x1,1x4x1} --no-diffusers \
  --warmup 1 --iters 2 --json "$OUT/dit_defaults_163f_4gpu.json" 2>&1 | grep -v -i warn | tail -6
