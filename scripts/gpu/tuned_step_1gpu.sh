# 1-GPU call (#9, and #3 through the ranks' pointwise share): the bf16 step compiled as now against the same step
# with inductor's coordinate-descent tuning of the compiled pointwise/reduction kernels (110 ms a step at 49 frames,
# the largest excess over the floor after attention; its QK-norm + RoPE kernel alone runs at ~40% of bandwidth).
# Same process, same weights and inputs; --profile gives each mode's kernel categories. Carry: .whl
# Ran 2026-11-27 on an H100: 993.8 -> 988.5 ms (0.995x; pointwise 124.3 -> 114.7 ms), rel 1.4e-2 from untuned;
# record docs/bench/step_tuned_49f_h100.json. Not made the default (see docs/benchmarks.md).
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 560 python3 -m mochi_runtime.bench step --tuned --profile --json "$OUT/step_tuned_49f.json" 2>&1 \
  | grep -v -i warn | tail -12
