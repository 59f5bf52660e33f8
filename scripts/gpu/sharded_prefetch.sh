# 4-GPU run 4: sharded weights with deeper prefetch and on ulysses 4 (#10), then the 1-GPU pipeline in 48 GiB (#7).
source scripts/gpu/setup.sh
mkdir -p "$OUT"
python3 -m mochi_runtime.bench dit --layouts 2x2x1,1x4x1 --weights replicated,sharded,sharded@2 --iters 4 \
  --json "$OUT/dit_sharded_prefetch.json" 2>&1 | grep -v Warning
python3 -m mochi_runtime.bench pipeline --runs 1x1x1:replicated:48:49 --no-spread-vae --json "$OUT/pipeline_1gpu.json" 2>&1 | grep -v Warning
