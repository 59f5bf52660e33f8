# 2-GPU call (#3): the token-major Ulysses exchange with the K/V all-to-alls posted before the visual Q is computed
# (scripts/gpu/kv_first.patch: Q's projection split off so it runs beside the K/V exchange) against the exchange
# as it is (all of Q/K/V projected, then exchanged), same machine, same call, each with its own 1-GPU baseline and
# eager check. Carry: .whl
# Ran 2026-11-28 00:13 on 2x H100: as is 546.6 ms (1.784x of 975.0), K/V first 555.0 ms (1.773x of 984.2), both
# eager bit-equal to 1 GPU. ~8 ms of exchange did overlap, but the split Q and K/V norm + RoPE kernels cost 7 ms
# more pointwise and the all-to-alls ran 5 ms longer beside the matmuls: not adopted. Records
# docs/bench/dit_qkv_then_swap_49f_h100x2.json, dit_kv_first_49f_h100x2.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
dit() { timeout 270 python3 -m mochi_runtime.bench dit --layouts ${LAYOUTS:-1x2x1} --profile --no-diffusers --warmup 1 \
  --iters 3 --json "$OUT/dit_$1_49f.json" 2>&1 | grep -v -i warn | tail -6 ; }
dit qkv_then_swap
patch -s -p1 < scripts/gpu/kv_first.patch && dit kv_first
