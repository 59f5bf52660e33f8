# 1-GPU call (#9): the fp8 modes with the fused QK-norm + RoPE pass (now the default): bf16, fp8 linears, fp8
# linears + cuDNN fp8 attention, same process, floor measured there. Carry: .whl, .whl-cudnn
# Ran 2026-11-28 01:08 on 1x H100: bf16 976.5 ms, fp8 825.8 (0.846x), fp8 + fp8 attention 743.0 (0.761x); record
# docs/bench/step_fp8_qk_rope_49f_h100.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 420 python3 -m mochi_runtime.bench step --frames 49 --fp8 --fp8-attention --warmup 1 --iters 3 \
  --json "$OUT/step_fp8_qk_rope_49f.json" 2>&1 | grep -v -i warn | grep -E "^49f|tflops|^49 "
