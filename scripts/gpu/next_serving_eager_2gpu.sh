# Next 2-GPU call (#7, part 2): latents through Triton vs the in-process runtime on a cfg-2 group with
# mochi_dit's compile=false (the mode whose fresh multi-GPU groups were bit-equal, 2026-11-27), Triton asked
# twice, in-process twice, 25 frames. DEPLOYMENT=0,1,2,3@2x2x1 on a 4-GPU machine for the 4-GPU layout.
# Carry: .whl .gpu
source scripts/gpu/setup.sh
source scripts/gpu/setup_serving.sh
mkdir -p "$OUT"
python3 -m mochi_runtime.bench load --dir /tmp/mochi-full --device cuda --parts vae 2>&1 | grep -v Warning | tail -1
env -u PYTHONPATH $SERVE_PY -m mochi_runtime.bench serving --model-dir /tmp/mochi-full --deployments ${DEPLOYMENT:-0,1@2x1x1} \
  --frames 25 --compile false --throughput '' --history-check --json "$OUT/serving_eager_cfg2.json" 2>&1 \
  | grep -v -i warning | grep -Ev "^[IWE][0-9]{4} |^\+---|^\|" | tail -20
