# 4-GPU call (#7): the full-size random checkpoint written and loaded back (time, host/GPU peaks), then
# Triton with mochi_dit as one instance over 4 GPUs (cfg 2 x ulysses 2) against the in-process runtime.
# DEPLOYMENTS="0,1;2,3@2x1x1" (two lanes), SERVING_ARGS="--compile false --frames 163 --steps 3 --throughput ''"
# Carry: .whl .gpu
source scripts/gpu/setup.sh
source scripts/gpu/setup_serving.sh
mkdir -p "$OUT"
[ -d /tmp/mochi-full/text_encoder ] || python3 -m mochi_runtime.bench load --dir /tmp/mochi-full --device cuda --json "$OUT/load_full.json" 2>&1 | grep -v Warning | tail -8
env -u PYTHONPATH $SERVE_PY -m mochi_runtime.bench serving --model-dir /tmp/mochi-full --deployments ${DEPLOYMENTS:-0,1,2,3@2x2x1} \
  $SERVING_ARGS --json "$OUT/serving.json" 2>&1 | grep -v -i warning | grep -Ev "^[IWE][0-9]{4} |^\+---|^\|" | tail -60
