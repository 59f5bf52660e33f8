from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mochi_runtime.loading.checkpoints import CheckpointError, ModelDir
from mochi_runtime.pipeline import MochiPipeline
from mochi_runtime.loading.loaders import load_dit, load_vae

CPU = torch.device("cpu")


def test_both_layouts_load_identical_tensors(official_dir, diffusers_dir):
    a, b = ModelDir.open(official_dir), ModelDir.open(diffusers_dir)
    assert (a.layout, b.layout) == ("official", "diffusers")
    assert a.dit_config() == b.dit_config() and a.vae_config() == b.vae_config()
    assert len(list((diffusers_dir / "transformer").glob("*.safetensors"))) > 1  # sharded with an index
    for loader in (load_dit, load_vae):
        sa, sb = loader(a, CPU, torch.float32).state_dict(), loader(b, CPU, torch.float32).state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


def test_load_casts_to_target_dtype(official_dir):
    dit = load_dit(ModelDir.open(official_dir), CPU, torch.bfloat16)
    assert {p.dtype for p in dit.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in dit.parameters())


def test_missing_key_is_named(official_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(official_dir, bad)
    state = load_file(str(bad / "dit.safetensors"))
    del state["blocks.1.attn.qkv_y.weight"]
    save_file(state, str(bad / "dit.safetensors"))
    with pytest.raises(CheckpointError, match=r"blocks\.1\.attn\.qkv_y\.weight"):
        load_dit(ModelDir.open(bad), CPU, torch.float32)


def test_missing_key_in_diffusers_layout_is_named(diffusers_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(diffusers_dir, bad)
    index = json.loads((bad / "transformer" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    key = "transformer_blocks.0.attn1.to_k.weight"
    shard = bad / "transformer" / index["weight_map"][key]
    state = load_file(str(shard))
    del state[key]
    save_file(state, str(shard))
    with pytest.raises(CheckpointError, match=r"transformer_blocks\.0\.attn1\.to_k\.weight"):
        load_dit(ModelDir.open(bad), CPU, torch.float32)


def test_unexpected_keys_are_reported(official_dir, tmp_path, caplog):
    extra = tmp_path / "extra"
    shutil.copytree(official_dir, extra)
    state = load_file(str(extra / "dit.safetensors"))
    state["blocks.0.attn.something_new"] = torch.zeros(3)
    save_file(state, str(extra / "dit.safetensors"))
    with caplog.at_level("WARNING"):
        load_dit(ModelDir.open(extra), CPU, torch.float32)
    assert "blocks.0.attn.something_new" in caplog.text


def test_not_a_model_dir(tmp_path):
    with pytest.raises(CheckpointError, match="neither an official"):
        ModelDir.open(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        ModelDir.open(tmp_path / "nope")


def test_embedded_default_is_written_once_and_reused():
    from mochi_runtime.loading.tiny import embedded_model_dir

    first = embedded_model_dir()
    mtime = (first / "dit.safetensors").stat().st_mtime_ns
    assert embedded_model_dir() == first
    assert (first / "dit.safetensors").stat().st_mtime_ns == mtime
    pipe = MochiPipeline.from_dir(None, device="cpu")
    assert pipe.text_encoder.feature_dim == 64


@pytest.mark.parametrize("layout", ["official", "diffusers"])
def test_row_reads_equal_slices_of_whole_tensors(layout, official_dir, diffusers_dir):
    """Sharded loading reads only a rank's rows; through every key-map rule they equal the whole tensor's rows."""
    from mochi_runtime.loading.checkpoints import caster, iter_expected, plan_reads, read_rows, read_tensor
    from mochi_runtime.models.dit import AsymmDiT
    from mochi_runtime.parallel.sharded import shard_rows

    md = ModelDir.open(official_dir if layout == "official" else diffusers_dir)
    with torch.device("meta"):
        dit = AsymmDiT(md.dit_config())
    source, rules = md.dit_source()
    cast = caster("cpu", torch.float32)
    kinds = set()
    for rule in plan_reads(source, rules, list(iter_expected(dit))):
        whole = read_tensor(source, rule, cast)
        kinds.add(rule.kind)
        for world in (2, 3, 4):
            for rank in range(world):
                start, stop = shard_rows(whole.shape[0], rank, world)
                assert torch.equal(read_rows(source, rule, start, stop, cast), whole[start:stop]), (rule, rank)
    assert kinds == ({"same"} if layout == "official" else {"same", "split3", "swap2"})


@pytest.mark.parametrize("compile_dit,compiled", [(None, False), (False, False), (True, True)])
def test_compile_choice_reaches_the_dit(compile_dit, compiled, official_dir):
    """`--compile` / mochi_dit's `compile`: auto compiles on GPU only; off keeps the blocks eager (the mode whose
    multi-GPU latents are reproducible across restarts). torch.compile wraps lazily, so nothing compiles here."""
    pipe = MochiPipeline.from_dir(official_dir, device="cpu", compile=compile_dit)
    block = pipe.denoiser.dit.blocks[0]
    assert hasattr(block.pre_attention, "_torchdynamo_orig_callable") == compiled
    assert hasattr(block.post_attention, "_torchdynamo_orig_callable") == compiled


def test_compile_blocks_takes_halves_by_name(official_dir):
    dit = load_dit(ModelDir.open(official_dir), torch.device("cpu"), torch.float32, compile=False)
    dit.compile_blocks(("pre_attention",))
    assert hasattr(dit.blocks[0].pre_attention, "_torchdynamo_orig_callable")
    assert not hasattr(dit.blocks[0].post_attention, "_torchdynamo_orig_callable")
    with pytest.raises(ValueError, match="compile parts must be among"):
        dit.compile_blocks(("attention",))
