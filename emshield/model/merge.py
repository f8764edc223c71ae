"""Backbone + core -> merged model: ``merged[name] = backbone[name] + scale·B·A`` (spec/decouple.md).

The sum is formed in float64 and rounded once to the backbone's dtype, so a merged model is
as close to the adapter-wrapped model as its dtype allows. Torch + safetensors only.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from tqdm import tqdm

from emshield.core import Core
from emshield.model.io import (
    PICKLE_SUFFIXES, SAFETENSORS_INDEX, SAFETENSORS_SINGLE, ModelFileError, TensorSource, open_tensors, save_tensors,
)

# Files of a Hugging Face folder that describe the model rather than hold weights: a merged
# folder carries them over so it loads like the backbone.
_WEIGHT_FILE_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


def check_core_fits(core: Core, backbone: TensorSource | Mapping[str, torch.Tensor]) -> None:
    """Every core layer names a 2-D backbone weight of ΔW's shape."""
    for name, f in core.items():
        if name not in backbone:
            raise ModelFileError(f"core layer {name!r} is not a tensor of the backbone")
        shape = tuple(backbone.get(name).shape)
        if shape != f.shape:
            raise ModelFileError(f"core layer {name!r}: ΔW shape {f.shape} does not match backbone weight {shape}")


def merged_tensor(weight: torch.Tensor, factors) -> torch.Tensor:
    delta = torch.from_numpy(factors.delta())
    return (weight.to(torch.float64) + delta).to(weight.dtype)


def merge_tensors(backbone: TensorSource, core: Core, progress: bool = False) -> dict[str, torch.Tensor]:
    """All backbone tensors, with each core layer's ΔW added."""
    check_core_fits(core, backbone)
    out: dict[str, torch.Tensor] = {}
    for name in tqdm(backbone.keys(), desc="merge", disable=not progress):
        w = backbone.get(name)
        out[name] = merged_tensor(w, core[name]) if name in core else w
    return out


def write_merged(backbone_path: str | Path, core: Core, out: str | Path, progress: bool = False) -> Path:
    """Merge and write: a backbone folder gives a folder (config and tokenizer files copied,
    weights in ``model.safetensors``); a backbone file gives a ``.safetensors`` file."""
    src_path, out = Path(backbone_path), Path(out)
    if out.exists() and out.resolve() == src_path.resolve():
        raise ModelFileError("refusing to overwrite the backbone with the merged model")
    with open_tensors(src_path) as backbone:
        merged = merge_tensors(backbone, core, progress=progress)
    if src_path.is_dir():
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(src_path.iterdir()):
            if f.is_file() and not f.name.endswith(_WEIGHT_FILE_SUFFIXES) and f.name != SAFETENSORS_INDEX:
                shutil.copyfile(f, out / f.name)
        save_tensors(merged, out / SAFETENSORS_SINGLE, metadata={"format": "pt"})
        return out
    if out.suffix != ".safetensors":
        raise ModelFileError(f"merged output for a single-file backbone must end in .safetensors: {out}")
    return save_tensors(merged, out, metadata={"format": "pt"})
