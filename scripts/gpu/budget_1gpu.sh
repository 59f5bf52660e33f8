# 1 GPU: the `generate` command's planner and pipeline (T5-XXL, the 10B DiT, the VAE, all resident as the
# command keeps them) under per-process caps of 24 and 48 GiB, on a full-size random checkpoint in Genmo's layout,
# 848x480, one denoising step (peaks per step do not grow with steps). Record: docs/bench/pipeline_budget_1gpu_*.json
source scripts/gpu/setup.sh
mkdir -p "$OUT"
python3 -c "from pathlib import Path; from mochi_runtime.bench.load import write_checkpoint; print(write_checkpoint(Path('/tmp/mochi-full')))"
timeout 500 python3 -m mochi_runtime.bench pipeline --model-dir /tmp/mochi-full --steps 1 \
  --budget-runs fp8:24:49,bf16:48:49 \
  --json "$OUT/pipeline_budget_1gpu_run2.json" 2>&1 | grep -v -i warn | tail -40
