# 4-GPU call: the 4-GPU step breakdown per layout (#3: where the time past 1/4 goes), then Triton with
# two lanes of 2 GPUs against the one-group run of serving_4gpu.sh (#7), deterministic compilation on.
# Carry: .whl .gpu
source scripts/gpu/setup.sh
mkdir -p "$OUT"
for d in 1 4 12; do  # #3: the bf16 error of the sharded layouts after d blocks (48 blocks: ~4e-2)
  timeout 60 python3 -m mochi_runtime.bench dit --layouts 2x2x1,2x1x2 --depth $d --no-compile --warmup 0 --iters 1 \
    --json "$OUT/dit_err_depth$d.json" 2>&1 | grep -v -i warn | tail -4
done
timeout 240 python3 -m mochi_runtime.bench dit --layouts 2x2x1,2x1x2 --profile --warmup 1 --iters 3 --json "$OUT/dit_4gpu_profile.json" 2>&1 | grep -v -i warn | tail -12
DEPLOYMENTS="0,1;2,3@2x1x1 0,1,2,3@2x2x1" SERVING_ARGS="--deterministic" bash scripts/gpu/serving_4gpu.sh
