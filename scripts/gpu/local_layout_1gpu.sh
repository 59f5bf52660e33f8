# 1-GPU call (#9): the one-GPU attention reading token-major Q/K/V (no transposing copies after the norm + RoPE
# kernel; token-major output for the output projection) against the head-major layout it replaced, same GPU,
# same call: the head-major tree is this one with scripts/gpu/token_major_local.patch reversed.
# Ran 2026-11-27 20:20 on GPU 0 of 2x H200: head-major 1021.4 ms, token-major 1009.4 ms (iterations 1018.0-1022.7
# vs 1007.2-1011.8); records docs/bench/step_head_major_49f_h200.json, step_token_major_49f_h200.json. Carry: .whl
source scripts/gpu/setup.sh
mkdir -p "$OUT"
step() { timeout 240 python3 -m mochi_runtime.bench step --profile --json "$OUT/step_$1_49f.json" 2>&1 \
  | grep -v -i warn | grep -E "^49f|^\{" ; }
patch -s -R -p1 < scripts/gpu/token_major_local.patch && step head_major
patch -s -p1 < scripts/gpu/token_major_local.patch && step token_major
