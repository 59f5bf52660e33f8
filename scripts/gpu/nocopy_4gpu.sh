# 4-GPU call (#3, #9; run 2026-11-27 15:05, docs/bench/dit_parallel_49f_nocopy_h200x4.json): the sequence-parallel wrapper without Q/K/V concatenation
# (one GPU through the wrapper = the serving path; cfg 2 alone = the single-process attention; ulysses = the
# all-to-all writing next to the text rows), every layout against 1 GPU in one invocation, rank 0's kernels.
# Carry: .whl
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 420 python3 -m mochi_runtime.bench dit --layouts 2x1x1,2x2x1,2x1x2,1x4x1 --profile --no-diffusers \
  --warmup 1 --iters 3 --json "$OUT/dit_parallel_nocopy.json" 2>&1 | grep -v -i warn | tail -14
timeout 120 python3 -m mochi_runtime.bench step --frames 49 --warmup 1 --iters 4 --json "$OUT/step_49f.json" 2>&1 \
  | grep -v -i warn | tail -4
