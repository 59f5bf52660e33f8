# 4-GPU call (#3): (1) does xDiT compute our function? At full depth random weights turn bf16 rounding into
# (A record: ran at or before commit f73094e; the ours:tm / ours:cN engine variants no longer exist.)
# 4-5e-2 (ours compiled vs ours eager too), so compare the two engines after 1 and 4 blocks, where rounding
# has not grown; (2) ulysses chunks 2 against the current exchange, full depth, own 1-GPU baseline.
# Carry: .whl .whl-xdit
source scripts/gpu/setup.sh
mkdir -p "$OUT"
for d in 1 4; do
  timeout 150 python3 -m mochi_runtime.bench dit --layouts 2x2x1,1x4x1 --engines ours,xdit --depth $d --no-diffusers \
    --warmup 1 --iters 2 --json "$OUT/dit_xdit_depth$d.json" 2>&1 | grep -v -i warn | grep -v "INFO" | tail -6
done
timeout 240 python3 -m mochi_runtime.bench dit --layouts 2x2x1 --engines ours,ours:c2 --no-diffusers \
  --warmup 1 --iters 3 --json "$OUT/dit_chunks_4gpu.json" 2>&1 | grep -v -i warn | tail -4
