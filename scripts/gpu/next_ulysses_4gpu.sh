# Next 4-GPU call (#3): the two Ulysses changes written and CPU-tested this session, not yet run on a GPU, each in
# its own invocation with its own 1-GPU baseline on the same machine:
#   --ulysses-chunks 2: each exchange split by heads, posted at once, so later chunks' transfers overlap attention;
#   --ulysses-token-major: projections write per-destination token-major blocks exchanged point-to-point into the
#     buffers attention reads (no Q/K/V packing or reassembly copies; one output copy instead of two).
# Before (2026-11-27 15:05): cfg 2 x ulysses 2 293.5 ms = 3.39x, 21.8 ms copies + 16.7 ms all-to-all on rank 0;
# 3.6x needs 276.7 ms. Carry: .whl
source scripts/gpu/setup.sh
mkdir -p "$OUT"
for variant in "--ulysses-chunks 1" "--ulysses-chunks 2" "--ulysses-token-major"; do
  name=$(echo "$variant" | tr -d ' -')
  timeout 190 python3 -m mochi_runtime.bench dit --layouts 2x2x1,1x4x1 $variant --profile --no-diffusers \
    --warmup 1 --iters 3 --json "$OUT/dit_$name.json" 2>&1 | grep -v -i warn | tail -3
done
