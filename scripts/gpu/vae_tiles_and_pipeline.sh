# 4-GPU run 3: VAE tiled modes on one GPU (#4), then whole-pipeline memory under 4x24 / 4x48 GiB (#10).
source scripts/gpu/setup.sh
mkdir -p "$OUT"
python3 -m mochi_runtime.bench vae --frames 49,163 --gpus 4 --tiles 4,8 --iters 2 --json "$OUT/vae_tiles.json" 2>&1 | grep -v Warning
python3 -m mochi_runtime.bench pipeline --runs 2x2x1:sharded:24:49,2x2x1:sharded:48:163 --json "$OUT/pipeline.json" 2>&1 | grep -v Warning
