# 4-GPU call (#3): the Ulysses exchange alone by transport (NCCL list all-to-alls as the step does them, one
# all_to_all_single, copy engines over symmetric memory) and by NCCL setting, at the 49-frame sizes of
# cfg 2 x ulysses 2 and ulysses 4; then the step itself under the fastest NCCL setting, if one gains >= 5%.
# Carry: .whl
# Ran 2026-11-27 at 22:00 (4x H200: every setting but the two below) and 22:20 (A2A_SKIP_ENVS naming those already
# run: default, registered buffers, P2P read): no setting beat the defaults, so the step was not rerun;
# records docs/bench/a2a_probe_h200x4.json, docs/bench/a2a_probe_register_h200x4.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
A2A_SKIP_ENVS=${A2A_SKIP_ENVS-} timeout 330 python3 scripts/gpu/a2a_probe.py "$OUT/a2a_probe_4gpu.json" 2>&1 \
  | grep -v -i warn | tail -24
BEST=$(python3 - "$OUT/a2a_probe_4gpu.json" <<'PY'
import json, sys
record = json.load(open(sys.argv[1]))
ENVS = record["envs"]
rows = [r for r in record["rows"] if r.get("method") == "nccl" and r.get("layout") == "2x2x1"]
worst = {}
for r in rows:
    worst[r["env"]] = max(worst.get(r["env"], 0.0), r["ms_per_step"])
best = min(worst, key=worst.get)
if best != "default" and worst[best] <= 0.95 * worst["default"]:
    print(" ".join(f"{k}={v}" for k, v in ENVS[best].items()))
PY
)
echo "fastest NCCL setting for the step: '${BEST:-default}'"
if [ -n "$BEST" ]; then
  env $BEST timeout 250 python3 -m mochi_runtime.bench dit --layouts 2x2x1,1x4x1 --no-diffusers --warmup 1 --iters 3 \
    --json "$OUT/dit_nccl_env_49f_4gpu.json" 2>&1 | grep -v -i warn | tail -4
fi
