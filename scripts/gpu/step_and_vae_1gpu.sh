# 1-GPU call (#9, #4): DiT step vs the floor with a kernel breakdown and the fp8 mode at 49 frames; the VAE
# at 163 and 49 frames (6 and 7 tiles) against diffusers; then the 163-frame step breakdown if time is left.
# Carry: .whl
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 330 python3 -m mochi_runtime.bench step --frames 49 --fp8 --profile --warmup 1 --iters 4 --json "$OUT/step_49f.json" 2>&1 | grep -v -i warn | tail -30
timeout 170 python3 -m mochi_runtime.bench vae --frames 163,49 --gpus 1 --tiles 6,7 --warmup 1 --iters 2 --json "$OUT/vae_1gpu.json" 2>&1 | grep -v -i warn | tail -22
timeout 90 python3 -m mochi_runtime.bench step --frames 163 --profile --warmup 1 --iters 2 --json "$OUT/step_163f.json" 2>&1 | grep -v -i warn | tail -8
