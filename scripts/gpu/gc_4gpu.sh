# 4-GPU call (#3): are the slow steps of multi-GPU runs (271-321 ms at cfg 2 x ulysses 2 on 4x H100, the 4th of 5
# steps slow in most runs) Python collector passes? cfg 2 x ulysses 2 at 49 frames, 10 steps, every rank's
# collector passes recorded; then the same with --gc-freeze (collect and gc.freeze() after a warm step).
# Carry: .whl
# Ran 2026-11-28 on 4x H100: default 1 GPU 959.5, 2x2x1 278.6 ms (3.443x), steps 270.1-294.7, 2 gen-2 passes of up to
# 363 ms per rank while timed; --gc-freeze 960.1 / 280.3 (3.425x), steps 274.9-297.1, no passes: not the collector.
# Records docs/bench/dit_gc_{default,freeze}_49f_h100x4.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
for mode in default freeze; do
  flag=""; [ "$mode" = freeze ] && flag="--gc-freeze"
  timeout 280 python3 -m mochi_runtime.bench dit --layouts ${LAYOUTS:-2x2x1} --no-diffusers --warmup 1 --iters 10 \
    $flag --json "$OUT/dit_gc_${mode}_49f_4gpu.json" 2>&1 | grep -v -i warn | grep "^1 GPU\|steps\|ms/step"
done
