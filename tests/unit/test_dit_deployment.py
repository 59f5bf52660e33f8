"""mochi_dit's deployment from its parameters: GPU sets per instance and the weights mode, refused at load
with the variable to set (the server starts none of it: these are the functions the adapter calls)."""
from __future__ import annotations

import json

import pytest

from mochi_runtime.models.config import get_preset
from mochi_runtime.parallel import Layout
from mochi_runtime.serving.adapters import Params
from mochi_runtime.serving.dit_deployment import lane_devices, plan_weights
from mochi_runtime.validation import Limits


def _args(count: int = 1, instance: int = 0) -> dict:
    return {"model_config": json.dumps({"name": "mochi_dit", "instance_group": [{"count": count}]}),
            "model_instance_name": f"mochi_dit_0_{instance}"}


def test_gpu_sets_become_lanes_and_instances_take_every_nth():
    p = Params({"gpus": "0,1;2,3;4,5;6,7"}, "mochi_dit")
    assert lane_devices(p, _args()) == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert lane_devices(p, _args(count=2, instance=1)) == [(2, 3), (6, 7)]
    assert lane_devices(Params({"gpus": "", "cpu_groups": "3"}, "mochi_dit"), _args()) == [None, None, None]


def test_bad_gpu_sets_name_the_variable():
    with pytest.raises(ValueError, match="MOCHI_MOCHI_DIT_GPUS"):
        lane_devices(Params({"gpus": "0,x"}, "mochi_dit"), _args())
    with pytest.raises(ValueError, match="has no GPU set"):
        lane_devices(Params({"gpus": "0,1"}, "mochi_dit"), _args(count=2, instance=1))


def test_weights_auto_shards_only_when_a_full_copy_would_not_fit():
    cfg = get_preset("mochi-1-preview").dit
    limits = Limits(max_frames=49, max_pixels=848 * 480, max_steps=64)
    layout = Layout(2, 2, 1)
    gpus = (0, 1, 2, 3)
    roomy = Params({"weights": "auto", "memory_budget_bytes": str(80 * 2**30)}, "mochi_dit")
    tight = Params({"weights": "auto", "memory_budget_bytes": str(16 * 2**30)}, "mochi_dit")
    assert plan_weights(roomy, cfg, layout, gpus, limits)[0] == "replicated"
    assert plan_weights(tight, cfg, layout, gpus, limits)[0] == "sharded"  # 18.7 GiB of bf16 weights > 16 GiB


def test_a_budget_that_cannot_hold_the_weights_is_refused_at_load():
    cfg = get_preset("mochi-1-preview").dit
    p = Params({"weights": "replicated", "memory_budget_bytes": str(8 * 2**30)}, "mochi_dit")
    with pytest.raises(ValueError, match="cannot hold the DiT's replicated weights"):
        plan_weights(p, cfg, Layout(1, 1, 1), (0,), Limits(max_frames=49, max_pixels=848 * 480, max_steps=64))
