# 4-GPU call (#7): latents through Triton vs the in-process runtime with mochi_dit's compile=false (the mode whose
# fresh multi-GPU groups were bit-equal, 2026-11-27), on 2 GPUs (cfg 2) and 4 GPUs (cfg 2 x ulysses 2, then
# ulysses 2 x ring 2), 25 frames, 6 steps, with the in-process group also run after mochi_dit's load-time warm-up.
# FRAMES=49 DEPLOYMENTS='0,1@1x1x2' ran 2026-11-27 on 2x H200 (4-GPU kinds were not lent): ring 2 at 49 frames,
# bit-equal, step ratio 1.000 (docs/bench/serving_ring_eager_49f_h200x2.json).
# DEPLOYMENTS='0,1@1x2x1' FRAMES=49 ran 2026-11-28 on 2x H200 (10th session: fused QK-norm + RoPE pass and the
# one-message exchange): ulysses 2, bit-equal, step 642.4 vs 643.4 ms (docs/bench/serving_ulysses2_eager_49f_h200x2.json).
# One JSON record, rewritten after every deployment (a cut-short run keeps what it measured). Carry: .whl .gpu
source scripts/gpu/setup.sh
source scripts/gpu/setup_serving.sh
mkdir -p "$OUT"
python3 -m mochi_runtime.bench load --dir /tmp/mochi-full --device cuda --parts vae 2>&1 | grep -v Warning | tail -1
timeout 500 env -u PYTHONPATH $SERVE_PY -m mochi_runtime.bench serving --model-dir /tmp/mochi-full \
  --deployments ${DEPLOYMENTS:-0,1@2x1x1 0,1,2,3@2x2x1 0,1,2,3@1x2x2} --frames ${FRAMES:-25} --compile false --throughput '' \
  --history-check --json "$OUT/serving_eager.json" 2>&1 | grep -v -i warning | grep -Ev "^[IWE][0-9]{4} |^\+---|^\|" | tail -30
