# 2-GPU call (#3): why steps run back to back are slower than single synced steps on several GPUs (4x H200:
# 282.2 against 271.1 ms at cfg 2 x ulysses 2; 1 GPU is faster back to back). Rank 0's profile of 3 steps run
# back to back, with the GPU's idle time and what it waited for, 1 GPU and ulysses 2. Carry: .whl
# Ran 2026-11-28 01:25 on 2x H200: 1 GPU 957.2 / 959.2 ms; ulysses 2 529.2 / 539.1; profiled back to back, rank 0
# kernels 530.5 ms a step and 4.3 ms idle in 3 steps; record docs/bench/dit_chained_gaps_49f_h200x2.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 400 python3 -m mochi_runtime.bench dit --layouts ${LAYOUTS:-1x2x1} --profile --profile-steps 3 --no-diffusers \
  --warmup 1 --iters 3 --json "$OUT/dit_chained_gaps_49f_2gpu.json" 2>&1 | grep -v -i warn | grep -E "^1 GPU|ulysses"
