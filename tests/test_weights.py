"""Weight loading: a synthetic checkpoint in the official xLSTM-7B key layout, written here
key by key, and this project's own checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from kernels import XLSTM, ModelConfig, WeightsError, get_config, load_checkpoint, load_official_xlstm, save_checkpoint
from kernels.weights import save_official_layout

# A 7B-like layout in miniature: only mLSTM blocks, like the official checkpoint.
SMALL = ModelConfig("weights-test", vocab_size=96, embedding_dim=32, num_heads=2, num_blocks=2)


def official_tensors(config: ModelConfig, seed=0, dtype=torch.bfloat16, embedding_key="backbone.embeddings.weight"):
    """Random tensors under the official names and shapes (out_features, in_features)."""
    g = torch.Generator().manual_seed(seed)
    d, NH, qk, v, ffn = config.embedding_dim, config.num_heads, config.qk_dim, config.v_dim, config.ffn_dim

    def t(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    tensors = {embedding_key: t(config.vocab_size, d)}
    for b in range(config.num_blocks):
        p = f"backbone.blocks.{b}."
        tensors |= {
            p + "norm_mlstm.weight": t(d),
            p + "mlstm_layer.q.weight": t(qk, d),
            p + "mlstm_layer.k.weight": t(qk, d),
            p + "mlstm_layer.v.weight": t(v, d),
            p + "mlstm_layer.ogate_preact.weight": t(v, d),
            p + "mlstm_layer.igate_preact.weight": t(NH, d),
            p + "mlstm_layer.igate_preact.bias": t(NH),
            p + "mlstm_layer.fgate_preact.weight": t(NH, d),
            p + "mlstm_layer.fgate_preact.bias": t(NH),
            p + "mlstm_layer.multihead_norm.weight": t(v),
            p + "mlstm_layer.out_proj.weight": t(d, v),
            p + "norm_ffn.weight": t(d),
            p + "ffn.proj_up_gate.weight": t(ffn, d),
            p + "ffn.proj_up.weight": t(ffn, d),
            p + "ffn.proj_down.weight": t(d, ffn),
        }
    tensors |= {"backbone.out_norm.weight": t(d), "lm_head.weight": t(config.vocab_size, d)}
    return tensors


def assert_loaded(model: XLSTM, tensors: dict):
    params = dict(model.named_parameters())
    own = {
        "backbone.embeddings.weight": "embedding.weight",
        "embedding.weight": "embedding.weight",
        "lm_head.weight": "lm_head.weight",
    }
    assert len(tensors) == len(params)
    for key, value in tensors.items():
        name = own.get(key, key.removeprefix("backbone."))
        assert torch.equal(params[name], value.to(params[name].dtype)), key


def test_official_single_file_round_trip(tmp_path):
    tensors = official_tensors(SMALL)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    model = XLSTM(SMALL, seed=0)
    load_official_xlstm(model, tmp_path)
    assert_loaded(model, tensors)
    logits, _ = model(torch.zeros(1, 3, dtype=torch.long))
    assert torch.isfinite(logits).all()


def test_official_sharded_with_index(tmp_path):
    tensors = official_tensors(SMALL, seed=1)
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for file, names in shards.items():
        save_file({k: tensors[k] for k in names}, str(tmp_path / file))
        weight_map |= {k: file for k in names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model = XLSTM(SMALL, dtype=torch.bfloat16, seed=0)
    load_official_xlstm(model, tmp_path)
    assert_loaded(model, tensors)


def test_xlstm_package_embedding_name_is_accepted(tmp_path):
    tensors = official_tensors(SMALL, seed=2, embedding_key="embedding.weight")
    save_file(tensors, str(tmp_path / "weights.safetensors"))
    model = load_official_xlstm(XLSTM(SMALL, seed=0), tmp_path / "weights.safetensors")
    assert_loaded(model, tensors)


def test_save_official_layout_round_trip(tmp_path):
    source = XLSTM(SMALL, seed=5)
    save_official_layout(source, tmp_path / "model.safetensors")
    target = load_official_xlstm(XLSTM(SMALL, seed=6), tmp_path)
    tokens = torch.arange(7).view(1, 7)
    assert torch.equal(source(tokens)[0], target(tokens)[0])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t.pop("backbone.blocks.1.ffn.proj_up.weight"), "lacks 1 tensor"),
        (lambda t: t.__setitem__("backbone.blocks.0.mlstm_layer.q.weight", torch.zeros(3, 32)), r"q.weight has shape \(3, 32\)"),
        (lambda t: t.__setitem__("backbone.blocks.0.mlstm_layer.qkv_opreact.weight", torch.zeros(1)), "fused weight layout"),
        (lambda t: t.__setitem__("backbone.blocks.9.norm_ffn.weight", torch.zeros(32)), "no place in the model"),
    ],
)
def test_mismatched_checkpoint_is_a_clear_error(tmp_path, mutate, message):
    tensors = official_tensors(SMALL)
    mutate(tensors)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError, match=message):
        load_official_xlstm(XLSTM(SMALL, seed=0), tmp_path)


def test_official_layout_refuses_slstm_models_and_missing_paths(tmp_path):
    with pytest.raises(WeightsError, match="sLSTM blocks"):
        load_official_xlstm(XLSTM(get_config("tiny"), seed=0), tmp_path)
    with pytest.raises(WeightsError, match="no checkpoint at"):
        load_official_xlstm(XLSTM(SMALL, seed=0), tmp_path / "absent")
    with pytest.raises(WeightsError, match="no .safetensors files"):
        load_official_xlstm(XLSTM(SMALL, seed=0), tmp_path)


def test_own_checkpoint_round_trip(tmp_path):
    source = XLSTM(get_config("tiny"), seed=7)
    save_checkpoint(source, tmp_path / "tiny.safetensors")
    loaded = load_checkpoint(tmp_path / "tiny.safetensors", device="cpu")
    assert loaded.config == source.config
    tokens = torch.arange(9).view(1, 9)
    assert torch.equal(source(tokens)[0], loaded(tokens)[0])
    as_bf16 = load_checkpoint(tmp_path / "tiny.safetensors", dtype=torch.bfloat16)
    assert as_bf16.dtype == torch.bfloat16


def test_own_loader_rejects_foreign_files(tmp_path):
    save_file(official_tensors(SMALL), str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError, match="not an xlstm-autotune checkpoint"):
        load_checkpoint(tmp_path / "model.safetensors")
