# 4-GPU call (#3): token-major Ulysses ran 391.9 ms a step where its kernels add up to 276.4 ms (2026-11-27 17:18):
# where do the ~115 ms of idle GPU come from? Rank 0's profile now lists the host operators by CPU time beside the
# kernels (a launching thread blocked in a sync or a slow NCCL call shows there). Carry: .whl
source scripts/gpu/setup.sh
mkdir -p "$OUT"
timeout 300 python3 -m mochi_runtime.bench dit --layouts 2x2x1 --engines ours,ours:tm --profile --no-diffusers \
  --warmup 1 --iters 2 --json "$OUT/dit_tm_host_4gpu.json" 2>&1 | grep -v -i warn | tail -3
python3 - "$OUT/dit_tm_host_4gpu.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    p = r.get("profile_rank0") or {}
    print(r["layout"], r.get("engine"), r.get("ms_per_cfg_step"), "kernels", p.get("kernel_ms"), "wall", p.get("profiled_wall_ms"), "host", p.get("host_self_ms"))
    for o in p.get("top_host_ops", [])[:8]:
        print("   ", o)
PY
