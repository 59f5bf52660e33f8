# 2-GPU call (#7, part 1): which compiled half makes fresh cfg-2 groups differ (eager fresh groups were
# bit-equal, 2026-11-27). `bench dit` runs a layout named twice in fresh processes and reports
# `rel_err_vs_earlier_run` (1x1x1 named once more: the 1-GPU baseline against a fresh 1-GPU process).
# Carry: .whl
# Ran 2026-11-27 22:45 (2x H200): pre_attention alone: the two fresh cfg-2 groups bit-equal to each other (both
# 3.86e-2 from the batch-2 1-GPU baseline, eager 0.0); post_attention alone: 4.14e-2 apart. Records
# docs/bench/dit_repro_{pre,post}_attention_25f_h200x2.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
for parts in pre_attention post_attention; do
  timeout 270 python3 -m mochi_runtime.bench dit --layouts 1x1x1,2x1x1,2x1x1 --frames 25 --compile-parts $parts \
    --no-diffusers --warmup 1 --iters 1 --json "$OUT/dit_repro_$parts.json" 2>&1 | grep -v -i warn | tail -5
done
