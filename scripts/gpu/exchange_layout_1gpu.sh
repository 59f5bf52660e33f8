# 1-GPU call (#3): scripts/gpu/exchange_layout_probe.py at the per-rank shapes of cfg 2 x ulysses 2 (1 sample,
# 7,155 tokens, ulysses 2) and ulysses 4 (2 samples, 3,578 tokens, ulysses 4). Carry: .whl
# Ran 2026-11-28 00:28 on 1x H100: 45.84 / 45.93 / 46.16 ms per 48 calls (2x2x1 shape), 46.24 / 47.04 / 46.99
# (1x4x1): no variant removes the layout copy; records docs/bench/exchange_layout_{2x2x1,1x4x1}_h100.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 280 python3 scripts/gpu/exchange_layout_probe.py "$OUT/exchange_layout_2x2x1.json" 7155 1 2 2>&1 | grep -v -i warn
timeout 250 python3 scripts/gpu/exchange_layout_probe.py "$OUT/exchange_layout_1x4x1.json" 3578 2 4 2>&1 | grep -v -i warn
