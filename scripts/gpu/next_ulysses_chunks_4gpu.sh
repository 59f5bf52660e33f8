# Next 4-GPU call (#3): Ulysses exchanges split by heads (`--ulysses-chunks`, written and CPU-tested, not yet run on
# a GPU), so the all-to-all of chunk i+1 and the way back of chunk i overlap attention on chunk i. 2x2x1 was 293.5 ms
# (3.39x) with 16.7 ms of exposed all-to-all; 3.6x needs 276.7 ms. Same machine, one invocation per chunk count.
# Carry: .whl
source scripts/gpu/setup.sh
mkdir -p "$OUT"
for c in 1 2 3; do
  timeout 190 python3 -m mochi_runtime.bench dit --layouts 2x2x1,1x4x1 --ulysses-chunks $c --profile --no-diffusers \
    --warmup 1 --iters 3 --json "$OUT/dit_ulysses_chunks_$c.json" 2>&1 | grep -v -i warn | tail -3
done
