# 4-GPU run 1: VAE decode benchmark (#4) and the ring layouts of the DiT (#3), 848x480x49.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
python3 -m mochi_runtime.bench vae --frames 49,163 --gpus 2,4 --json "$OUT/vae.json" 2>&1 | grep -v Warning
python3 -m mochi_runtime.bench dit --layouts 1x1x2,1x2x2,2x1x2 --iters 4 --json "$OUT/dit_ring.json" 2>&1 | grep -v Warning
