# 4-GPU machine, last call of 2026-11-27 17:30 (#3, #9):
# (1) after one block xDiT differed from ours by 1.5e-2 while ours was bit-equal to 1 GPU: is that the kernel
#     (xDiT runs torch's flash SDPA, ours cuDNN)? Both engines and the baseline on the flash kernel, depth 1.
# (2) cuDNN fp8 attention: the kernel probe, then bench step (bf16, fp8 linears, fp8 linears + fp8 attention).
# Carry: .whl .whl-xdit .whl-cudnn
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 120 python3 -m mochi_runtime.bench dit --layouts 2x2x1 --engines ours,xdit --depth 1 --attention flash \
  --no-diffusers --warmup 1 --iters 2 --json "$OUT/dit_xdit_depth1_flash.json" 2>&1 | grep -v -i warn | grep -v INFO | tail -4
python3 -c "import torch, cudnn; print('cudnn frontend', cudnn.__version__, 'backend', cudnn.backend_version())" 2>&1 | tail -1
timeout 100 python3 scripts/gpu/fp8_attention_probe.py "$OUT/fp8_attention_probe.json" 2>&1 | grep -v -i warn | tail -16
timeout 320 python3 -m mochi_runtime.bench step --frames 49 --fp8 --fp8-attention --profile --warmup 1 --iters 3 \
  --json "$OUT/step_fp8_attention_49f.json" 2>&1 | grep -v -i warn | tail -14
