# 2-GPU call (#3): how far bf16 rounding alone moves the 1-GPU output and each 2-GPU layout, against an fp32 run
# of the same weights (bench dit --fp32-reference; eager everywhere, so compile differences are out). The ring's
# 1.8e-2 from 1 GPU after one block (2026-11-27) is only meaningful next to the 1-GPU bf16 output's own distance
# from fp32. Depth 1 first (one block, quick), then the full 48 blocks. Carry: .whl
# Ran 2026-11-27 20:09 on 2x H100: ring 2 vs fp32 2.630e-2 (1 block) / 5.50e-2 (48) against 1 GPU's own 2.626e-2 /
# 5.48e-2; records docs/bench/dit_fp32ref_depth1_49f_h100x2.json, dit_fp32ref_49f_h100x2.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
for depth in 1 48; do
  timeout 280 python3 -m mochi_runtime.bench dit --layouts 1x1x2,2x1x1,1x2x1 --fp32-reference --no-compile \
    --no-diffusers --warmup 1 --iters 2 --depth $depth --json "$OUT/dit_fp32ref_d${depth}_49f_2gpu.json" 2>&1 \
    | grep -v -i warn | tail -6
done
