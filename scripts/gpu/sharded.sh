# 4-GPU run 2: FSDP2-sharded vs replicated DiT weights (#10), 848x480x49, then 4x24 GiB budget.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
python3 -m mochi_runtime.bench dit --layouts 1x2x1,2x2x1 --weights replicated,sharded,sharded-sp --iters 4 \
  --json "$OUT/dit_sharded.json" 2>&1 | grep -v Warning
