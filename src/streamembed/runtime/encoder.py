"""The encoder stage: a loaded backbone (backbones.py, weights by checkpoints.py) turning a
block's normalised windows into per-cell embeddings, held once per worker by a WorkerPlugin."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from distributed.diagnostics.plugin import WorkerPlugin

from ..config import ModelConfig
from .backbones import EMBEDDING_DIM, build_backbone, is_vit
from .checkpoints import CheckpointError, file_sha256, load_backbone_weights
from .ingest import BlockPixels
from .runtimes import ConvertedBackbone
from .windows import window_inputs

__all__ = ["EMBEDDING_DIM", "CheckpointError", "Encoder", "EncoderPlugin", "model_identity"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelIdentity:
    """What produced an embedding: the store and every anomaly row carry it."""

    model_id: str
    weights: str
    seeded: bool
    checkpoint_sha256: str | None = None


def model_identity(cfg: ModelConfig) -> ModelIdentity:
    """Identity of the configured encoder without building it (hashes the checkpoint file)."""
    in_chans = len(cfg.bands)
    if cfg.checkpoint:
        if not Path(cfg.checkpoint).exists():
            raise CheckpointError(
                f"model.checkpoint {cfg.checkpoint} not found; weights cannot be downloaded at run "
                "time here: put the .pth file on disk and point model.checkpoint at it"
            )
        digest = file_sha256(cfg.checkpoint)
        model_id = f"{cfg.arch}-{in_chans}b-{digest[:12]}"
        return ModelIdentity(model_id, Path(cfg.checkpoint).name, False, digest)
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
        model = build_backbone(cfg.arch, self.in_chans)
        if cfg.checkpoint:
            layout = load_backbone_weights(model, cfg.checkpoint, cfg.arch, self.in_chans)
            self.weights = f"{self.weights} ({layout} layout)"
        model.eval().to(self.device)
        # channels_last: the convolutions' fastest layout on CPU (benchmarks/RESULTS.md); a
        # ViT's one convolution is its patch embedding, where it gains nothing.
        self.channels_last = not is_vit(cfg.arch)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model = model
        self.converted: ConvertedBackbone | None = None
        if cfg.runtime != "torch":
            if self.device.type == "cuda":
                log.info("model.runtime %s is for CPUs: PyTorch runs on the GPU", cfg.runtime)
            else:
                self.converted = ConvertedBackbone(model, cfg.runtime)
        # (window shape, windows, pass size) -> whether that short pass gives a full pass's bits
        self._short_pass_exact: dict[tuple[tuple[int, ...], int, int], bool] = {}
        self.windows_encoded = 0  # padding and checks included

    def pass_size(self, tile_windows: int) -> int:
        """Windows per forward pass for a tile of ``tile_windows`` windows: ``batch_size``, or
        the whole tile where it has fewer (a one-window tile is not padded to four)."""
        return max(1, min(self.cfg.batch_size, tile_windows))

    def _forward(self, chunk: np.ndarray) -> np.ndarray:
        if self.converted is not None:
            return self.converted.features(chunk)
        x = torch.from_numpy(np.ascontiguousarray(chunk))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
        ):
            f = self.model.features(x)
        return f.float().cpu().numpy()

    @torch.inference_mode()
    def feature_maps(self, inputs: np.ndarray, pass_size: int | None = None) -> np.ndarray:
        """Per-cell feature maps (n, dim, y/32, x/32) float32 for normalised windows.

        A window's features must not depend on how many windows came with it (blocks of any
        size give the same bits), so every pass is computed as a pass of ``pass_size`` windows
        (default ``batch_size``; fixed per tile by ``pass_size``). A shorter last pass is padded
        with zero windows, except where this worker has seen its kernels give the same bits
        for that many windows as for a full pass: the first short pass of each length is run
        both ways and compared, and from then on runs unpadded if they agreed (on the CPU they
        do; a GPU keeps padding).
        """
        outs = []
        bs = pass_size or max(1, self.cfg.batch_size)
        for i in range(0, len(inputs), bs):
            chunk = inputs[i : i + bs]
            n = len(chunk)
            key = (chunk.shape[1:], n, bs)
            if n == bs or self._short_pass_exact.get(key):
                outs.append(self._forward(chunk))
                self.windows_encoded += n
                continue
            padded = np.concatenate([chunk, np.zeros((bs - n, *chunk.shape[1:]), chunk.dtype)])
            full = self._forward(padded)[:n]
            self.windows_encoded += bs
            # A converted runtime is compiled per pass shape: short passes stay padded.
            checkable = self.device.type == "cpu" and self.converted is None
            if key not in self._short_pass_exact and checkable:
                self._short_pass_exact[key] = np.array_equal(self._forward(chunk), full)
                self.windows_encoded += n
                log.debug("a pass of %d of %d windows %s", n, bs,
                          "is exact unpadded" if self._short_pass_exact[key] else "needs padding")  # fmt: skip
            outs.append(full)
        return np.concatenate(outs)

    @torch.inference_mode()
    def pooled(self, inputs: np.ndarray, pass_size: int = 4) -> np.ndarray:
        """The model's own embeddings (n, dim) float32 of whole inputs (Major TOM fragments):
        passes of ``pass_size``, the last padded, so a fragment's vector never depends on
        which fragments came with it."""
        outs = []
        for i in range(0, len(inputs), pass_size):
            chunk = inputs[i : i + pass_size]
            n = len(chunk)
            if n < pass_size:
                pad = np.zeros((pass_size - n, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            x = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            outs.append(self.model.pooled(x)[:n].float().cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, self.dim), np.float32)

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
        self.loads_by_model: dict[str, int] = {}  # model config (JSON) -> times built here

    @property
    def loads(self) -> int:
        """Encoders built on this worker, every model config together."""
        return sum(self.loads_by_model.values())

    def setup(self, worker: Any) -> None:
        self._encoders = {}

    def teardown(self, worker: Any) -> None:
        self._encoders.clear()

    def get(self, cfg: ModelConfig) -> Encoder:
        key = cfg.model_dump_json()
        if key not in self._encoders:
            enc = Encoder(cfg)
            self.loads_by_model[key] = self.loads_by_model.get(key, 0) + 1
            level = logging.WARNING if enc.seeded else logging.INFO
            log.log(level, "encoder %s loaded on this worker: %s", enc.model_id, enc.weights)
            self._encoders[key] = enc
        return self._encoders[key]
