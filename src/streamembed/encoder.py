"""SSL4EO-S12-compatible ResNet encoders producing dense per-cell embeddings, and checkpoint loading.

The backbones use the plain timm/torchvision key names (``conv1``, ``bn1``, ``layer1.0.conv1`` …,
``fc``), so torchgeo's SSL4EO-S12 weight files load as they are (only ``fc.*`` missing) and the
original SSL4EO-S12 MoCo checkpoints load once their ``module.encoder_q.`` prefix is stripped.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from distributed.diagnostics.plugin import WorkerPlugin
from torch import nn

from .config import ModelConfig
from .ingest import BlockPixels, window_inputs

log = logging.getLogger(__name__)

EMBEDDING_DIM = {"resnet18": 512, "resnet50": 2048}
_LAYERS = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}
STRIDE = 32


class CheckpointError(ValueError):
    """A checkpoint that does not fit the configured encoder; the message says how to fix it."""


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet-18/50 with timm key names; ``features`` is the dense stride-32 map."""

    def __init__(self, arch: str, in_chans: int, num_classes: int = 1000):
        super().__init__()
        block: type[BasicBlock] | type[Bottleneck] = (
            BasicBlock if arch == "resnet18" else Bottleneck
        )
        self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = 64
        layers = []
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), _LAYERS[arch], strict=True)):
            layers.append(self._make_layer(block, planes, blocks, 1 if i == 0 else 2))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        mods: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes, 1, None) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


# ---------------------------------------------------------------- checkpoints


def _unwrap(obj: Any) -> Mapping[str, Any]:
    """The state dict inside common checkpoint containers (Lightning, MoCo, DINO)."""
    for key in ("state_dict", "model", "teacher"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            return _unwrap(obj[key])
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    return obj


def map_checkpoint_keys(state: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Backbone state dict in timm key names, and the layout it was found in.

    Layouts: ``ssl4eo-moco`` (``module.encoder_q.*``; the momentum encoder ``encoder_k`` and the
    MLP head ``fc.*`` are dropped), ``dino`` (``module.backbone.*`` / ``backbone.*``),
    ``lightning`` (``model.*`` / ``backbone.*``), and ``timm`` (plain names, torchgeo files).
    """
    keys = list(state)
    layouts = (
        ("ssl4eo-moco", "module.encoder_q."),
        ("ssl4eo-moco", "encoder_q."),
        ("dino", "module.backbone."),
        ("dino", "backbone."),
        ("lightning", "model."),
        ("dataparallel", "module."),
    )
    layout, prefix = "timm", ""
    for name, pfx in layouts:
        if any(k.startswith(pfx) for k in keys):
            layout, prefix = name, pfx
            break
    mapped = {
        k[len(prefix) :]: v
        for k, v in state.items()
        if k.startswith(prefix) and not k[len(prefix) :].startswith(("fc.", "head."))
    }
    return mapped, layout


def load_backbone_weights(model: ResNet, path: str | Path, arch: str, in_chans: int) -> str:
    """Load an SSL4EO/torchgeo checkpoint into ``model``; returns the layout found."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(
            f"model.checkpoint {p} not found; weights cannot be downloaded at run time here: "
            "put the .pth file on disk and point model.checkpoint at it"
        )
    try:
        raw = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"model.checkpoint {p}: not a readable torch checkpoint: {err}"
        ) from err
    state, layout = map_checkpoint_keys(_unwrap(raw))
    conv1 = state.get("conv1.weight")
    if conv1 is None:
        raise CheckpointError(
            f"model.checkpoint {p}: no conv1.weight after mapping the {layout} layout; "
            f"first keys: {list(state)[:5]}"
        )
    if conv1.shape[1] != in_chans:
        raise CheckpointError(
            f"model.checkpoint {p} expects {conv1.shape[1]} input bands but model.bands lists "
            f"{in_chans}; SSL4EO-S12 L1C checkpoints take 13 bands (B01…B12 with B10), "
            "L2A-trained ones 12: set model.bands to match the checkpoint"
        )
    is_bottleneck = "layer1.0.conv3.weight" in state
    if is_bottleneck != (arch == "resnet50"):
        found = "resnet50" if is_bottleneck else "resnet18"
        raise CheckpointError(
            f"model.checkpoint {p} holds a {found} backbone but model.arch is {arch}"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"model.checkpoint {p} ({layout} layout) does not match {arch}: "
            f"missing {missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}"
        )
    return layout


def _file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


# ---------------------------------------------------------------- encoder


@dataclass(frozen=True)
class ModelIdentity:
    """What produced an embedding: the store and every anomaly row carry it."""

    model_id: str
    weights: str
    seeded: bool


def model_identity(cfg: ModelConfig) -> ModelIdentity:
    """Identity of the configured encoder without building it (hashes the checkpoint file)."""
    in_chans = len(cfg.bands)
    if cfg.checkpoint:
        if not Path(cfg.checkpoint).exists():
            raise CheckpointError(
                f"model.checkpoint {cfg.checkpoint} not found; weights cannot be downloaded at run "
                "time here: put the .pth file on disk and point model.checkpoint at it"
            )
        tag = _file_digest(cfg.checkpoint)
        return ModelIdentity(f"{cfg.arch}-{in_chans}b-{tag}", Path(cfg.checkpoint).name, False)
    weights = f"seeded random weights (seed {cfg.seed}), not pretrained"
    return ModelIdentity(f"{cfg.arch}-{in_chans}b-seed{cfg.seed}", weights, True)


class Encoder:
    """A loaded backbone with its identity; ``embed_block`` gives a block's cell embeddings."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.in_chans = len(cfg.bands)
        self.dim = EMBEDDING_DIM[cfg.arch]
        use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if use_cuda else "cpu")
        if not use_cuda:
            torch.set_num_threads(cfg.torch_threads)
        self.identity = model_identity(cfg)
        self.model_id, self.weights, self.seeded = (
            self.identity.model_id,
            self.identity.weights,
            self.identity.seeded,
        )
        torch.manual_seed(cfg.seed)
        model = ResNet(cfg.arch, self.in_chans)
        if cfg.checkpoint:
            layout = load_backbone_weights(model, cfg.checkpoint, cfg.arch, self.in_chans)
            self.weights = f"{self.weights} ({layout} layout)"
        model.eval().to(self.device)
        self.model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def pass_size(self, tile_windows: int) -> int:
        """Windows per forward pass for a tile of ``tile_windows`` windows: ``batch_size``, or
        the whole tile where it has fewer (a one-window tile is not padded to four)."""
        return max(1, min(self.cfg.batch_size, tile_windows))

    @torch.inference_mode()
    def feature_maps(self, inputs: np.ndarray, pass_size: int | None = None) -> np.ndarray:
        """Dense stride-32 feature maps (n, dim, y/32, x/32) float32 for normalised windows.

        Every forward pass has exactly ``pass_size`` windows (default ``batch_size``; the last
        pass is padded): a window's features then never depend on how many windows came with
        it, so blocks of any size give the same bits. The pass size is fixed per tile (by
        ``pass_size``), so padding never goes beyond what that needs.
        """
        outs = []
        bs = pass_size or max(1, self.cfg.batch_size)
        for i in range(0, len(inputs), bs):
            chunk = inputs[i : i + bs]
            n = len(chunk)
            if n < bs:
                chunk = np.concatenate([chunk, np.zeros((bs - n, *chunk.shape[1:]), chunk.dtype)])
            x = torch.from_numpy(np.ascontiguousarray(chunk))
            if self.device.type == "cuda":
                x = x.pin_memory().to(self.device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(
                self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
            ):
                f = self.model.features(x)
            outs.append(f[:n].float().cpu().numpy())
        return np.concatenate(outs)

    def embed_block(self, pixels: BlockPixels, normalisation: str, cell: int) -> np.ndarray:
        """Embeddings (cells_y, cells_x, dim) float32 of a block's cells, margins cropped."""
        block = pixels.block
        windows = [p.window for p in block.parts]
        out = np.zeros((*block.shape, self.dim), np.float32)
        bs = self.pass_size(block.tile_windows)
        # Windows are cut and normalised one batch at a time: a block's float32 inputs never
        # sit in memory all at once.
        for i in range(0, len(windows), bs):
            inputs = window_inputs(
                pixels.dn, pixels.masked, pixels.origin, windows[i : i + bs],
                pixels.scale_offset, pixels.bands, normalisation, cell,
            )  # fmt: skip
            maps = self.feature_maps(inputs, bs)
            for part, fmap in zip(block.parts[i : i + bs], maps, strict=True):
                win, m = part.window, part.window.margin_cells
                ry = slice(m + part.cells_y[0] - win.cell_y, m + part.cells_y[1] - win.cell_y)
                rx = slice(m + part.cells_x[0] - win.cell_x, m + part.cells_x[1] - win.cell_x)
                oy = slice(part.cells_y[0] - block.cells_y[0], part.cells_y[1] - block.cells_y[0])
                ox = slice(part.cells_x[0] - block.cells_x[0], part.cells_x[1] - block.cells_x[0])
                out[oy, ox] = fmap[:, ry, rx].transpose(1, 2, 0)
        return out


class EncoderPlugin(WorkerPlugin):
    """Dask WorkerPlugin: each worker builds the encoder once per model config and reuses it."""

    name = "streamembed-encoder"

    def __init__(self) -> None:
        self._encoders: dict[str, Encoder] = {}
        self.loads = 0

    def setup(self, worker: Any) -> None:
        self._encoders = {}

    def teardown(self, worker: Any) -> None:
        self._encoders.clear()

    def get(self, cfg: ModelConfig) -> Encoder:
        key = cfg.model_dump_json()
        if key not in self._encoders:
            enc = Encoder(cfg)
            self.loads += 1
            level = logging.WARNING if enc.seeded else logging.INFO
            log.log(level, "encoder %s loaded on this worker: %s", enc.model_id, enc.weights)
            self._encoders[key] = enc
        return self._encoders[key]
