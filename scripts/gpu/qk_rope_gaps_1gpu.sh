# 1-GPU call (#9): where the GPU idles in the step with the fused QK-norm + RoPE pass (15.7 ms of a 972 ms step
# against 3.5 with inductor's kernels, 2026-11-28 00:40 on H100): `bench step --profile` now sums the gaps between
# kernels and names the kernel each gap precedes; bf16 fused against inductor's path. Carry: .whl
# Ran 2026-11-28 00:50 on 1x H100: fused 956.5 ms (1.198x of 798.2, GPU idle 3.25 ms), inductor 981.0 (1.229x,
# idle 1.26): the first call's idle time did not recur; record docs/bench/step_qk_rope_gaps_49f_h100.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 400 python3 -m mochi_runtime.bench step --frames 49 --unfused-qk-rope --profile --warmup 1 --iters 4 \
  --json "$OUT/step_qk_rope_gaps_49f.json" 2>&1 | grep -v -i warn | grep -E "^49f|tflops"
