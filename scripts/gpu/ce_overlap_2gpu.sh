# 2-GPU call (#3): scripts/gpu/ce_overlap_probe.py (the K/V exchange beside the Q projection: NCCL against copy
# engines) at the per-rank sizes of cfg 2 x ulysses 2, 49 frames. Carry: .whl
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 300 python3 scripts/gpu/ce_overlap_probe.py "$OUT/ce_overlap_probe_2gpu.json" 2>&1 | grep -v -i warn | tail -12
