# Next 4-GPU call (#3): the bf16 correctness check without compile's process-to-process noise. `bench dit` now
# runs one eager step per layout before compiling and records rel_err_eager_vs_1gpu and, for xDiT,
# rel_err_eager_vs_ours (compiled fresh groups of one layout differ by 3-4e-2, which hid both comparisons).
# Carry: .whl .whl-xdit
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 580 python3 -m mochi_runtime.bench dit --layouts 2x2x1,1x4x1,2x1x2 --engines ours,xdit --no-diffusers \
  --warmup 1 --iters 3 --json "$OUT/dit_eager_check_4gpu.json" 2>&1 | grep -v -i warn | tail -12
