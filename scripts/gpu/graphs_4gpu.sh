# 4-GPU call (#3, #9): the DiT step replayed as a CUDA graph against the same step launched kernel by kernel, in
# the same processes: 1 GPU, cfg 2 x ulysses 2 and ulysses 4 at 49 frames (bench dit --cuda-graphs); then one
# GPU against its floor with and without the graph (bench step --cuda-graphs). Carry: .whl
# Ran 2026-11-27 (4x H200) at commit ea51e89, where `cuda_graph.GraphedVelocity` and the --cuda-graphs flags
# lived; removed in the commit after it. One GPU: 977.2 ms launched vs 976.4 ms replayed (0.999x; record
# docs/bench/step_graphs_49f_h200.json): the ~12 ms between kernels is not launch overhead. The first
# multi-GPU capture (cfg 2 x ulysses 2) did not finish within the call's limit, so it has no record.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 330 python3 -m mochi_runtime.bench dit --layouts ${LAYOUTS:-2x2x1,1x4x1} --cuda-graphs --no-diffusers \
  --warmup 1 --iters 5 --json "$OUT/dit_graphs_49f_4gpu.json" 2>&1 | grep -v -i warn | tail -9
CUDA_VISIBLE_DEVICES=0 timeout 230 python3 -m mochi_runtime.bench step --frames 49 --cuda-graphs --warmup 1 \
  --iters 5 --json "$OUT/step_graphs_49f_1gpu.json" 2>&1 | grep -v -i warn | tail -6
