# 4-GPU call (2026-11-27): why attention runs below its measured rate (#9), whether a compiled DiT's output depends
# on the shapes compiled before (#7: Triton's warm-up at 7x32x32 vs the in-process runtime), the 4-GPU step per
# layout with rank 0's kernel breakdown (#3), and the bf16 error of the sharded layouts after 1 block (#3).
# Carry: .whl
source scripts/gpu/setup.sh
mkdir -p "$OUT"
CUDA_VISIBLE_DEVICES=3 timeout 240 python3 scripts/gpu/compile_history.py --preset mochi-1-preview \
  --json "$OUT/compile_history.json" > "$OUT/compile_history.log" 2>&1 &
CUDA_VISIBLE_DEVICES=0 timeout 90 python3 scripts/gpu/attention_probe.py "$OUT/attention_probe.json" 2>&1 | grep -v -i warn
wait
tail -2 "$OUT/compile_history.log"
timeout 240 python3 -m mochi_runtime.bench dit --layouts 2x2x1,2x1x2 --profile --no-diffusers --warmup 1 --iters 3 \
  --json "$OUT/dit_4gpu_profile.json" 2>&1 | grep -v -i warn | tail -12
timeout 60 python3 -m mochi_runtime.bench dit --layouts 2x2x1,2x1x2 --depth 1 --no-compile --no-diffusers --warmup 0 \
  --iters 1 --json "$OUT/dit_err_depth1.json" 2>&1 | grep -v -i warn | tail -5
