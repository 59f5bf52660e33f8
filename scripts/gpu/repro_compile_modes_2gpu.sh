# 2-GPU call (#7; run 2026-11-27, docs/bench/group_repro_cfg2_h200.json): which compile mode makes two fresh cfg-2 worker groups bit-equal
# (they differed by 1.6e-2 on 2x H200 while each group repeats itself exactly).
# Carry: .whl
source scripts/gpu/setup.sh
mkdir -p "$OUT"
python3 -m mochi_runtime.bench load --dir /tmp/mochi-full --device cuda --parts vae 2>&1 | grep -v Warning | tail -2
timeout 480 python3 scripts/gpu/group_repro.py --model-dir /tmp/mochi-full --layout 2x1x1 --gpus 0,1 --frames 25 \
  --modes eager,compiled,compiled-deterministic \
  "$OUT/group_repro.json" 2>&1 | grep -v -i warn | tail -6
