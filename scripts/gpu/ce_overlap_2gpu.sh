# 2-GPU call (#3): scripts/gpu/ce_overlap_probe.py (the K/V exchange beside the Q projection: NCCL against copy
# engines) at the per-rank sizes of cfg 2 x ulysses 2, 49 frames. Carry: .whl
# Ran 2026-11-28 00:33 on 2x H200: matmuls alone 28.71 ms per 48 blocks, serial NCCL 40.40, NCCL overlap 42.32,
# serial copy engines 40.47, copy-engine overlap 37.69 (all equal to NCCL's bytes); record
# docs/bench/ce_overlap_probe_h200x2.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 300 python3 scripts/gpu/ce_overlap_probe.py "$OUT/ce_overlap_probe_2gpu.json" 2>&1 | grep -v -i warn | tail -12
