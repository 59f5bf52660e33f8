# 1-GPU call (#9): cuDNN fp8 attention (`--attention fp8`, mochi_runtime/fp8_attention.py; first run 2026-11-27 by
# xdit_flash_fp8_4gpu.sh on GPU 0 of a 4x H200, docs/benchmarks.md) on top of the fp8 linears, against bf16 and fp8-linears
# in the same process, with the kernel breakdown. Build the wheel first: scripts/gpu/pack_cudnn_frontend_wheel.sh.
# Carry: .whl .whl-cudnn
source scripts/gpu/setup.sh
mkdir -p "$OUT"
python3 -c "import torch, cudnn; print('cudnn frontend', cudnn.__version__, 'backend', cudnn.backend_version())" 2>&1 | tail -1
timeout 120 python3 scripts/gpu/fp8_attention_probe.py "$OUT/fp8_attention_probe.json" 2>&1 | grep -v -i warn | tail -22
timeout 420 python3 -m mochi_runtime.bench step --frames 49 --fp8 --fp8-attention --profile --warmup 1 --iters 4 \
  --json "$OUT/step_fp8_attention_49f.json" 2>&1 | grep -v -i warn | tail -14
