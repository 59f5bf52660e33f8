# 4-GPU call for the next session (#3): the xDiT side-by-side. Our USP and xfuser 0.7.0's USP (joint_strategy="rear",
# SDPA_FLASH) behind the same DiT, weights, inputs and process groups, timed in one invocation against 1 GPU; xdit's
# output compared with ours per layout. (49 frames: 14,310 tokens divide 2 but not 4, so xdit's ring layouts run
# at sp 2 only.) Build the wheels first: scripts/gpu/pack_xdit_wheels.sh.
# Carry: .whl .whl-xdit
source scripts/gpu/setup.sh
mkdir -p "$OUT"
python3 -c "import xfuser, yunchang; print('xfuser', xfuser.__version__)" 2>&1 | tail -1
timeout 560 python3 -m mochi_runtime.bench dit --layouts 2x2x1,1x4x1,2x1x2 --engines ours,xdit --no-diffusers \
  --warmup 1 --iters 3 --json "$OUT/dit_xdit_4gpu.json" 2>&1 | grep -v -i warn | tail -16
