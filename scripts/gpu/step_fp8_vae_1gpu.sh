# 1-GPU call: what changed after the last measurements (#9: Q/K/V sliced from one buffer instead of
# concatenated; #4: pieces blended as they stream, no tile buffer). Same commands as step_and_vae_1gpu.sh.
# Carry: .whl
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 300 python3 -m mochi_runtime.bench step --frames 49 --fp8 --profile --warmup 1 --iters 4 --json "$OUT/step_49f.json" 2>&1 | grep -v -i warn | tail -12
timeout 200 python3 -m mochi_runtime.bench vae --frames 163,49 --gpus 1 --tiles 6 --warmup 1 --iters 2 --json "$OUT/vae_1gpu.json" 2>&1 | grep -v -i warn | tail -14
