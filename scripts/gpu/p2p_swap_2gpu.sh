# 2-GPU call (#3): the token-major Ulysses exchange as now (one list all-to-all per tensor and sample: 6 forward and
# 2 back per block at ulysses 2 with the CFG batch) against all of a block's transfers in one NCCL group of
# point-to-point sends/receives (scripts/gpu/p2p_swap.patch applied), same machine, same call, each with its own
# 1-GPU baseline. Carry: .whl
# Ran 2026-11-27 20:51 on 2x H200: list all-to-alls 541.8 ms (1.79x of 972.3), one P2P group 547.1 ms (1.78x of
# 976.0); records docs/bench/dit_swap_a2a_49f_h200x2.json, dit_swap_p2p_49f_h200x2.json. The list all-to-alls stay.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
dit() { timeout 250 python3 -m mochi_runtime.bench dit --layouts 1x2x1 --profile --no-diffusers --warmup 1 --iters 3 \
  --json "$OUT/dit_swap_$1_49f_2gpu.json" 2>&1 | grep -v -i warn | grep -E "^1 GPU|ms/step" ; }
dit a2a
patch -s -p1 < scripts/gpu/p2p_swap.patch && dit p2p
