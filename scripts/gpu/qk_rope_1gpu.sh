# 1-GPU call (#9): the fused QK-norm + RoPE + layout pass (mochi_runtime/qk_rope.py). First its tests on the GPU
# (tests/test_qk_rope.py: against the eager code, joint and Ulysses layouts), then `bench step` timing bf16
# with it (the default) against bf16 with inductor's kernels (--unfused-qk-rope) and fp8, each profiled,
# floor in the same process. Carry: .whl
# Ran 2026-11-28 00:40 on 1x H100: tests passed; bf16 fused 972.2 ms (1.214x of 800.6), inductor 993.3 (1.241x),
# fp8 828.4 (0.852x bf16); record docs/bench/step_qk_rope_49f_h100.json.
source scripts/gpu/setup.sh
mkdir -p "$OUT"
PYTHONPATH=$PYTHONPATH:tests python3 - <<'PY' 2>&1 | grep -v -i warn
import test_qk_rope as t


class Patch:  # pytest's monkeypatch.setattr, for running the tests without pytest
    def setattr(self, obj, name, value):
        setattr(obj, name, value)


t.test_the_fused_pass_is_for_cuda_16_bit_and_power_of_two_heads()
t.test_fake_shapes_match_what_the_ops_promise()
for split in (None, 2):
    t.test_fused_projection_equals_the_eager_code(split, Patch())
print("tests/test_qk_rope.py: 4 passed on", t.kernel_targets())
PY
timeout 480 python3 -m mochi_runtime.bench step --frames 49 --unfused-qk-rope --fp8 --profile --warmup 1 --iters 4 \
  --json "$OUT/step_qk_rope_49f.json" 2>&1 | grep -v -i warn | grep -E "^49f|tflops|^frames|^49 "
