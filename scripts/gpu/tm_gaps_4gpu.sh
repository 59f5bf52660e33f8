# 4-GPU call (#3): token-major Ulysses against the current exchange (cfg 2 x ulysses 2, ulysses 4), with rank 0's
# host operators by CPU time beside its kernels. 2026-11-27: kernels 277.7 ms but 96 cudaStreamSynchronize a
# step (a list index in put_rows, since replaced by a slice); this run shows whether the slice removed them.
# Ran 2026-11-27 (4x H200): the syncs are gone; token-major 276.4 vs 292.7 ms (2x2x1), 296.3 vs 311.8 (1x4x1);
# record docs/bench/dit_tm_nosync_49f_h200x4.json. Token-major then became the only ring-1 Ulysses exchange, and
# the `ours:tm` / `ours:cN` engine variants were removed: this command ran at commit f73094e.
# Carry: .whl
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 420 python3 -m mochi_runtime.bench dit --layouts 2x2x1,1x4x1 --engines ours,ours:tm --profile --no-diffusers \
  --warmup 1 --iters 2 --json "$OUT/dit_tm_host_4gpu.json" 2>&1 | grep -v -i warn | tail -3
python3 - "$OUT/dit_tm_host_4gpu.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    p = r.get("profile_rank0") or {}
    print(r["layout"], r.get("engine"), r.get("ms_per_cfg_step"), "kernels", p.get("kernel_ms"), "wall", p.get("profiled_wall_ms"), "host", p.get("host_self_ms"))
    for o in p.get("top_host_ops", [])[:8]:
        print("   ", o)
PY
