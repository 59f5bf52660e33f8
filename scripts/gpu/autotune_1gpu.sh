# 1-GPU call (#9): inductor's max_autotune on the compiled block halves: do Triton GEMM templates with the
# following pointwise work fused into their epilogues beat cuBLAS + separate kernels? bf16 against the default
# compile in the same process, with the kernel breakdown. Carry: .whl
# Ran 2026-11-28 03:04 on 1x H100: bf16 969.1 ms (1.197x of 809.3), max_autotune 974.1 (1.204x); cuBLAS won every
# GEMM (no triton_tem kernel), some Triton configs exceeded shared memory; record docs/bench/step_autotune_49f_h100.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 560 python3 -m mochi_runtime.bench step --frames 49 --autotune --profile --warmup 1 --iters 4 \
  --json "$OUT/step_autotune_49f.json" 2>&1 | grep -v -i warn | grep -E "^49f|tflops|Error|error" | cut -c1-1500
