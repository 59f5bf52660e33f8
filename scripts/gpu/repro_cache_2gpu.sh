# Is the cfg-2 difference between fresh compiled groups a cold-vs-warm inductor cache effect (#7)?
# On a fresh machine: compiled twice (cold then warm, then warm twice), and the same in inductor's deterministic
# mode; plus what this torch's inductor offers for deterministic reductions. Carry: .whl
source scripts/gpu/setup.sh
mkdir -p "$OUT"
T=$(python3 -c "import torch,os; print(os.path.dirname(torch.__file__))")
grep -c "filter_reduction_configs_for_determinism\|deterministic_mode" $T/_inductor/runtime/triton_heuristics.py
grep -n "^deterministic\|force_filter_reduction_configs\|^autotune_local_cache" $T/_inductor/config.py | head
python3 -m mochi_runtime.bench load --dir /tmp/mochi-full --device cuda --parts vae 2>&1 | grep -v Warning | tail -1
timeout 420 python3 scripts/gpu/group_repro.py --model-dir /tmp/mochi-full --layout 2x1x1 --gpus 0,1 --frames 25 \
  --modes compiled,compiled,compiled-deterministic,compiled-deterministic \
  "$OUT/group_repro_cache.json" 2>&1 | grep -v -i warn | tail -6
find /tmp/torchinductor_* -name "*.best_config" | wc -l
