# 4-GPU call 2 (#7): two mochi_dit instances over GPUs 0,1 and 2,3 (cfg 2 each) on the same checkpoint
# (rewritten only if the machine was given back in between).
# Carry: .whl .gpu
source scripts/gpu/setup.sh
source scripts/gpu/setup_serving.sh
mkdir -p "$OUT"
[ -f /tmp/mochi-full/dit.safetensors ] || python3 -m mochi_runtime.bench load --dir /tmp/mochi-full --device cuda --parts dit 2>&1 | tail -3
python3 -m mochi_runtime.bench serving --model-dir /tmp/mochi-full --deployments "0,1;2,3@2x1x1" \
  --json "$OUT/serving_2x2.json" 2>&1 | grep -v -i warning
