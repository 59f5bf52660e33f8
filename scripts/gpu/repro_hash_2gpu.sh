# Fresh compiled cfg-2 groups differ even with warm caches and inductor's deterministic mode (#7). Two more
# suspects: Python's per-process hash seed (set/dict order in code generation) and sharing one cache between
# the two ranks compiling at once (a private cache per group). Carry: .whl
source scripts/gpu/setup.sh
mkdir -p "$OUT"
python3 -m mochi_runtime.bench load --dir /tmp/mochi-full --device cuda --parts vae 2>&1 | grep -v Warning | tail -1
timeout 400 python3 scripts/gpu/group_repro.py --model-dir /tmp/mochi-full --layout 2x1x1 --gpus 0,1 --frames 25 \
  --modes compiled-hashseed,compiled-private-cache,compiled-hashseed \
  "$OUT/group_repro_hash.json" 2>&1 | grep -v -i warn | tail -6
