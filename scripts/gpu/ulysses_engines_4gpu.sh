# 4-GPU call (#3): one invocation, one 1-GPU baseline, per layout three engines in fresh groups:
# (A record: ran at or before commit f73094e; the ours:tm / ours:cN engine variants no longer exist.)
#   ours     the current exchange (2026-11-27 15:05: cfg 2 x ulysses 2 293.5 ms = 3.39x; 3.6x needs 276.7 ms);
#   ours:tm  token-major Ulysses: projections write per-destination blocks exchanged (list all-to-all) into the
#            buffers attention reads (no Q/K/V packing or reassembly; one output copy instead of two);
#   xdit     xfuser 0.7.0's USP, the seed's engine.
# Every run first takes one eager step: rel_err_eager_vs_1gpu is the bf16 check (compiled groups differ by
# 3-4e-2 between processes) and rel_err_eager_vs_first_engine the xDiT (and token-major) match.
# Carry: .whl .whl-xdit
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 570 python3 -m mochi_runtime.bench dit --layouts ${LAYOUTS:-2x2x1,1x4x1} --engines ${ENGINES:-ours,ours:tm,xdit} \
  --profile --no-diffusers --warmup 1 --iters 3 --json "$OUT/dit_engines_4gpu.json" 2>&1 | grep -v -i warn | tail -14
