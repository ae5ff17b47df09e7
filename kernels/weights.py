"""Weights: the official xLSTM-7B safetensors layout, and this project's own checkpoints.

Official layout (single weight mode, as published for xLSTM-7B), per block b:
    backbone.embeddings.weight                      (the xlstm package names it embedding.weight)
    backbone.blocks.{b}.norm_mlstm.weight
    backbone.blocks.{b}.mlstm_layer.{q,k,v,ogate_preact,out_proj}.weight
    backbone.blocks.{b}.mlstm_layer.{igate_preact,fgate_preact}.{weight,bias}
    backbone.blocks.{b}.mlstm_layer.multihead_norm.weight
    backbone.blocks.{b}.norm_ffn.weight
    backbone.blocks.{b}.ffn.{proj_up_gate,proj_up,proj_down}.weight
    backbone.out_norm.weight
    lm_head.weight
Our model uses the same module names without the `backbone.` prefix, so the mapping is a
rename. Tensors are read one at a time straight onto the model's device.

Own checkpoints: one safetensors file whose metadata carries the ModelConfig as JSON.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kernels.model import XLSTM, ModelConfig

OWN_FORMAT = "xlstm-autotune/1"


class WeightsError(ValueError):
    """A checkpoint does not fit the model (or is not there); the message says why."""


# ----------------------------------------------------------------------------- official layout


def official_to_own_name(key: str) -> str:
    """Map an official xLSTM-7B parameter name to this model's parameter name."""
    if key in ("backbone.embeddings.weight", "embedding.weight"):
        return "embedding.weight"
    if key.startswith("backbone."):
        return key[len("backbone.") :]
    return key  # lm_head.weight


def own_to_official_name(name: str) -> str:
    if name == "embedding.weight":
        return "backbone.embeddings.weight"
    if name == "lm_head.weight":
        return name
    return "backbone." + name


def official_files(path: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint: a file, or a directory holding
    model.safetensors, a sharded index (model.safetensors.index.json), or model_N.safetensors."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise WeightsError(f"no checkpoint at {path}: give a .safetensors file or the checkpoint directory")
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [path / name for name in sorted(set(weight_map.values()))]
    shards = sorted(path.glob("model_*.safetensors"), key=lambda p: int(p.stem.split("_")[-1]))
    if shards:
        return shards
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        return shards
    raise WeightsError(f"no .safetensors files in {path}")


def _load_named(model: XLSTM, files: list[Path], rename, what: str) -> None:
    params = dict(model.named_parameters())
    device = model.device
    loaded: set[str] = set()
    unexpected: list[str] = []
    for file in files:
        # safetensors reads straight onto cuda; other devices go through the CPU one tensor at a time.
        open_device = str(device) if device.type == "cuda" else "cpu"
        with safe_open(str(file), framework="pt", device=open_device) as f:
            for key in f.keys():
                name = rename(key)
                param = params.get(name)
                if param is None:
                    unexpected.append(key)
                    continue
                tensor = f.get_tensor(key)
                if tuple(tensor.shape) != tuple(param.shape):
                    raise WeightsError(
                        f"{what} {file.name}: {key} has shape {tuple(tensor.shape)}, the model "
                        f"({model.config.name}) expects {tuple(param.shape)}; build the model with "
                        "the shape the checkpoint was trained with"
                    )
                with torch.no_grad():
                    param.copy_(tensor)
                loaded.add(name)
    if unexpected:
        fused = [k for k in unexpected if "qkv_opreact" in k or "ifgate_preact" in k or "proj_up_gate_z" in k]
        hint = (
            "; this checkpoint uses the fused weight layout, convert it to single weights first"
            if fused
            else ""
        )
        raise WeightsError(
            f"{what}: {len(unexpected)} tensor(s) have no place in the model, e.g. {unexpected[:3]}{hint}"
        )
    missing = sorted(set(params) - loaded)
    if missing:
        raise WeightsError(f"{what}: the checkpoint lacks {len(missing)} tensor(s), e.g. {missing[:3]}")


def load_official_xlstm(model: XLSTM, path: str | Path) -> XLSTM:
    """Load official xLSTM-7B-layout safetensors weights into `model` in place.

    `model` must have the checkpoint's shape (e.g. get_config('7b')) and no sLSTM blocks.
    Weights are cast to the model's dtype on its device. Returns the model.
    """
    if model.config.slstm_at:
        raise WeightsError(
            f"model shape {model.config.name!r} has sLSTM blocks; the official xLSTM-7B layout has "
            "only mLSTM blocks, use a shape without slstm_at"
        )
    _load_named(model, official_files(path), official_to_own_name, "official checkpoint")
    return model


def save_official_layout(model: XLSTM, path: str | Path) -> None:
    """Write `model`'s weights as one safetensors file in the official key layout."""
    tensors = {own_to_official_name(n): p.detach().contiguous().cpu() for n, p in model.named_parameters()}
    save_file(tensors, str(path), metadata={"format": "pt"})


# ----------------------------------------------------------------------------- own checkpoints


def save_checkpoint(model: XLSTM, path: str | Path) -> None:
    """One safetensors file: the weights plus the ModelConfig in the metadata."""
    config = dataclasses.asdict(model.config)
    tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters()}
    save_file(tensors, str(path), metadata={"format": OWN_FORMAT, "config": json.dumps(config)})


def read_checkpoint_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no checkpoint file at {path}")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != OWN_FORMAT or "config" not in metadata:
        raise WeightsError(
            f"{path} is not an xlstm-autotune checkpoint (no config in its metadata); "
            "for official xLSTM weights use load_official_xlstm"
        )
    fields = json.loads(metadata["config"])
    fields["slstm_at"] = tuple(fields.get("slstm_at", ()))
    return ModelConfig(**fields)


def load_checkpoint(path: str | Path, *, device="cpu", dtype: torch.dtype = torch.float32, cell_runner=None) -> XLSTM:
    """Build the model a checkpoint describes on `device` and load its weights."""
    config = read_checkpoint_config(path)
    model = XLSTM(config, device=device, dtype=dtype, seed=None, cell_runner=cell_runner)
    _load_named(model, [Path(path)], lambda key: key, "checkpoint")
    return model
