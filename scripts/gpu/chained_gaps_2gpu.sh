# 2-GPU call (#3): why steps run back to back are slower than single synced steps on several GPUs (4x H200:
# 282.2 against 271.1 ms at cfg 2 x ulysses 2; 1 GPU is faster back to back). Rank 0's profile of 3 steps run
# back to back, with the GPU's idle time and what it waited for, 1 GPU and ulysses 2. Carry: .whl
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 400 python3 -m mochi_runtime.bench dit --layouts ${LAYOUTS:-1x2x1} --profile --profile-steps 3 --no-diffusers \
  --warmup 1 --iters 3 --json "$OUT/dit_chained_gaps_49f_2gpu.json" 2>&1 | grep -v -i warn | grep -E "^1 GPU|ulysses"
