# 4-GPU call (#7, the one item left): Ring layouts through Triton at the issue's 49 frames, compiled (the serving
# default), per-step latency in Triton against the in-process group in the same call. 2026-11-27 ran ulysses 2 x
# ring 2 only eager at 25 frames, where steps scattered 271-376 ms in both places (median ratio 1.106).
# Compiled multi-GPU latents are not expected bit-equal (fresh compiled groups differ; docs/operations.md).
# Ran 2026-11-27 (4x H200): Triton/in-process step 0.995 (1x2x2) and 0.999 (2x1x2); record
# docs/bench/serving_ring_49f_h200x4.json. Carry: .whl .gpu
source scripts/gpu/setup.sh
source scripts/gpu/setup_serving.sh
mkdir -p "$OUT"
python3 -m mochi_runtime.bench load --dir /tmp/mochi-full --device cuda --parts vae 2>&1 | grep -v Warning | tail -1
timeout 520 env -u PYTHONPATH $SERVE_PY -m mochi_runtime.bench serving --model-dir /tmp/mochi-full \
  --deployments ${DEPLOYMENTS:-0,1,2,3@1x2x2 0,1,2,3@2x1x2} --frames 49 --throughput '' \
  --json "$OUT/serving_ring_49f.json" 2>&1 | grep -v -i warning | grep -Ev "^[IWE][0-9]{4} |^\+---|^\|" | tail -30
