# (#7) Why mochi_dit's latents through Triton differed from the in-process runtime on GPU: one deployment with
# Triton asked twice (self-consistency), the in-process group cold, and a second in-process group that first runs
# the warm-up mochi_dit runs at load. DEPLOYMENT=0@1x1x1 (1 GPU, 49 frames) and
# DEPLOYMENT=0,1@2x1x1 EXTRA="--frames 25" (2 GPUs) were run on 2026-11-27.
# Carry: .whl .gpu
source scripts/gpu/setup.sh
source scripts/gpu/setup_serving.sh
mkdir -p "$OUT"
python3 -m mochi_runtime.bench load --dir /tmp/mochi-full --device cuda --parts vae 2>&1 | grep -v Warning | tail -2
env -u PYTHONPATH $SERVE_PY -m mochi_runtime.bench serving --model-dir /tmp/mochi-full --deployments ${DEPLOYMENT:-0@1x1x1} \
  $EXTRA --throughput '' --history-check --json "$OUT/serving_history.json" 2>&1 | grep -v -i warning | grep -Ev "^[IWE][0-9]{4} |^\+---|^\|" | tail -30
