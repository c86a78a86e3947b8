"""Weight files as users bring them: torchgeo/timm files and the original SSL4EO-S12 checkpoints.

Layouts recognised (the key prefix that names them is stripped, heads and decoders dropped):

- ``timm``: plain timm names, as torchgeo ships its SSL4EO-S12 weights (``fc.*``/``head.*``
  present or not);
- ``ssl4eo-moco``: MoCo v2 ResNets, ``state_dict`` with ``module.encoder_q.*`` (the momentum
  encoder ``encoder_k`` and the projection MLP are dropped);
- ``moco-v3``: MoCo v3 ViTs, ``module.base_encoder.*`` (``momentum_encoder`` dropped);
- ``dino``: DINO, the ``teacher`` (else ``student``) with ``module.backbone.*``/``backbone.*``;
- ``mae``: MAE, ``model`` with timm names plus ``decoder_*`` and ``mask_token`` (dropped);
- ``lightning``: a Lightning ``state_dict`` with ``model.*``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbones import EMBEDDING_DIM, VisionTransformer, is_vit


class CheckpointError(ValueError):
    """A checkpoint that does not fit the configured encoder; the message says how to fix it."""


_CONTAINERS = ("state_dict", "model", "teacher", "student")

_PREFIXES = (
    ("ssl4eo-moco", "module.encoder_q."),
    ("ssl4eo-moco", "encoder_q."),
    ("moco-v3", "module.base_encoder."),
    ("moco-v3", "base_encoder."),
    ("dino", "module.backbone."),
    ("dino", "backbone."),
    ("lightning", "model."),
    ("dataparallel", "module."),
)

# Parts of a pre-training model that are not the backbone: classification/projection heads,
# MAE's decoder and mask token.
_NOT_BACKBONE = ("fc.", "head.", "fc_norm.", "decoder", "mask_token")

_NOT_FOUND = (
    "weights cannot be downloaded at run time here: put the .pth file on disk and point "
    "model.checkpoint at it"
)


def _unwrap(obj: Any) -> tuple[Mapping[str, Any], str | None]:
    """The state dict inside common checkpoint containers, and the container key it was in."""
    for key in _CONTAINERS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            inner, _ = _unwrap(obj[key])
            return inner, key
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    return obj, None


def map_checkpoint_keys(state: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Backbone state dict in timm key names, and the layout it was found in."""
    keys = list(state)
    layout, prefix = "timm", ""
    for name, pfx in _PREFIXES:
        if any(k.startswith(pfx) for k in keys):
            layout, prefix = name, pfx
            break
    mapped = {
        k[len(prefix) :]: v
        for k, v in state.items()
        if k.startswith(prefix) and not k[len(prefix) :].startswith(_NOT_BACKBONE)
    }
    if layout == "timm" and any(k.startswith(("decoder", "mask_token")) for k in keys):
        layout = "mae"
    return mapped, layout


def found_arch(state: Mapping[str, Any]) -> str | None:
    """The backbone a mapped state dict holds, from its keys and widths (None: not known)."""
    qkv = state.get("blocks.0.attn.qkv.weight")
    if qkv is not None:
        width = int(qkv.shape[1])
        return next((a for a, d in EMBEDDING_DIM.items() if is_vit(a) and d == width), None)
    if "layer1.0.conv3.weight" in state:
        return "resnet50"
    if "layer1.0.conv1.weight" in state:
        return "resnet18" if "layer3.1.conv1.weight" in state else None
    return None


def _input_bands(state: Mapping[str, Any]) -> int | None:
    for key in ("conv1.weight", "patch_embed.proj.weight"):
        if key in state:
            return int(state[key].shape[1])
    return None


def _fit_position_grid(model: VisionTransformer, pos_embed: torch.Tensor, path: Path) -> None:
    """Give ``model`` the checkpoint's position grid (a ViT pre-trained at another size)."""
    tokens = int(pos_embed.shape[1]) - 1
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise CheckpointError(
            f"model.checkpoint {path}: pos_embed has {tokens} patch positions, not a square "
            "grid; only square pre-training grids (with one class token) are supported"
        )
    model.grid = side
    model.pos_embed = nn.Parameter(torch.zeros_like(pos_embed))


def read_state(path: str | Path) -> tuple[dict[str, Any], str]:
    """The backbone state dict of the file at ``path`` (timm names) and its layout."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"model.checkpoint {p} not found; {_NOT_FOUND}")
    try:
        # DINO's and MAE's trainers pickle their argparse options beside the weights: a
        # Namespace only sets attributes, so it is let through; nothing else executable is.
        with torch.serialization.safe_globals([argparse.Namespace]):
            raw = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"model.checkpoint {p}: not a readable torch checkpoint ({err}); give a .pth/.ckpt "
            "file saved with torch.save holding a state dict"
        ) from err
    inner, container = _unwrap(raw)
    state, layout = map_checkpoint_keys(inner)
    if container == "teacher" or (container == "student" and layout == "dino"):
        layout = "dino"
    return state, layout


def load_backbone_weights(model: nn.Module, path: str | Path, arch: str, in_chans: int) -> str:
    """Load an SSL4EO/torchgeo checkpoint into ``model``; returns the layout found.

    Refused, with the file and the fix: another backbone than ``arch``, another band count than
    ``in_chans``, any backbone weight missing or left over.
    """
    p = Path(path)
    state, layout = read_state(p)
    arch_found = found_arch(state)
    bands = _input_bands(state)
    if arch_found is None or bands is None:
        raise CheckpointError(
            f"model.checkpoint {p}: no ResNet-18/50 or ViT-S/B backbone found after mapping the "
            f"{layout} layout; first keys: {list(state)[:5]}. Supported: torchgeo/timm files and "
            "the SSL4EO-S12 MoCo, DINO and MAE checkpoints"
        )
    if arch_found != arch:
        raise CheckpointError(
            f"model.checkpoint {p} holds a {arch_found} backbone but model.arch is {arch}: "
            f"set model.arch: {arch_found}"
        )
    if bands != in_chans:
        raise CheckpointError(
            f"model.checkpoint {p} expects {bands} input bands but model.bands lists "
            f"{in_chans}; SSL4EO-S12 L1C checkpoints take 13 bands (B01…B12 with B10), "
            "L2A-trained ones 12: set model.bands to match the checkpoint"
        )
    pos = state.get("pos_embed")
    if (
        isinstance(model, VisionTransformer)
        and pos is not None
        and pos.shape != model.pos_embed.shape
    ):
        _fit_position_grid(model, pos, p)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a weight of another shape
        raise CheckpointError(
            f"model.checkpoint {p} ({layout} layout) does not fit {arch}: {err}"
        ) from None
    missing = [k for k in result.missing_keys if not k.startswith(("fc.", "head."))]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"model.checkpoint {p} ({layout} layout) does not match {arch}: "
            f"missing {missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}; "
            "the file may be a partial or fine-tuned model: give the pre-trained backbone"
        )
    return layout


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
