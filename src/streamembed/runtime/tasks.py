"""The tasks workers run for one block, and what the store records about them.

``read_task`` (CPU: read, mask, cell summaries; compact DN out) and ``encode_task`` (the worker's
resident encoder, then a region write into the store) are the two tasks of every block;
``task_resources`` says which workers may run each. Kept apart from the driver so a worker
imports only what it runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from distributed import Client, get_worker

from ..acquisition import Acquisition
from ..config import Config
from ..faults import crash_point
from ..grid import TileGrid
from ..outputs.store import EmbeddingStore, Provenance, Reservation
from .encoder import EncoderPlugin, ModelIdentity
from .ingest import Block, BlockPixels, IngestError, read_block_pixels
from .stages import StageSeconds

log = logging.getLogger(__name__)


def read_task(acq: Acquisition, grid: TileGrid, block: Block, cfg: Config) -> BlockPixels:
    """Read and mask one block of an acquisition (CPU work; compact DN + mask out)."""
    crash_point("read")
    try:
        return read_block_pixels(acq, grid, block, cfg.ingest, cfg.model)
    except IngestError as err:
        error = type(err)(*err.args)
    # Raised outside the handler, without the chain: distributed pickles a task's exception
    # with its causes, and rasterio's errors do not unpickle, so a chained error reaches the
    # driver as a bare Exception and its class (transient, corrupt, grid) is lost.
    raise error


@dataclass(frozen=True)
class BlockResult:
    """One block encoded and written into its acquisition's reserved time step."""

    acquisition_id: str
    block: int
    cells: int
    bytes_in: int  # what the read task handed to this one (DN, mask, cell summaries)
    seconds: StageSeconds


def encode_task(pixels: BlockPixels, reservation: Reservation, cfg: Config) -> BlockResult:
    """Encode a block on this worker's resident model and write it into the store by region."""
    plugin = get_worker().plugins[EncoderPlugin.name]
    encoder = plugin.get(cfg.model)  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    embedding = encoder.embed_block(pixels, cfg.model.normalisation, cfg.ingest.cell_size)
    t1 = time.perf_counter()
    crash_point("encode")
    block = pixels.block
    EmbeddingStore(cfg.layout.store, cfg.store).write_block(
        reservation, block.cells_y, block.cells_x, embedding, pixels.clear, pixels.snow,
        pixels.indices,
    )  # fmt: skip
    seconds = StageSeconds(
        read_decode_resample=pixels.read_seconds,
        mask_normalise=pixels.mask_seconds,
        encode=t1 - t0,
        store_write=time.perf_counter() - t1,
    )
    return BlockResult(
        pixels.acquisition_id, block.index, block.shape[0] * block.shape[1], pixels.nbytes, seconds
    )


def software_versions() -> tuple[str, ...]:
    """The libraries that compute an embedding, "name version" (the store records them)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("streamembed", "torch", "numpy", "rasterio"):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return tuple(out)


def provenance(identity: ModelIdentity, cfg: Config) -> Provenance:
    """What the store records about how this run's embeddings are made."""
    return Provenance(
        model_id=identity.model_id,
        model_weights=identity.weights,
        model_seeded=identity.seeded,
        model_arch=cfg.model.arch,
        bands=cfg.model.bands,
        normalisation=cfg.model.normalisation,
        window_px=cfg.ingest.window,
        margin_px=cfg.ingest.margin,
        scl_mask_classes=cfg.ingest.scl_mask_classes,
        checkpoint_sha256=identity.checkpoint_sha256,
        software=software_versions(),
    )


def task_resources(
    cfg: Config, client: Client
) -> tuple[dict[str, int] | None, dict[str, int] | None]:
    """Where encode and read/mask tasks may run: GPU-tagged workers encode, the others read.

    From the config (jobqueue/kubernetes GPU groups, whose workers may still be queued) or,
    for a running scheduler, from the resources its workers advertise. With no GPU workers
    every task runs anywhere.
    """
    workers = client.scheduler_info().get("workers", {}).values()
    advertised = {r for w in workers for r in (w.get("resources") or {})}
    gpu = cfg.cluster.has_gpu_groups or "GPU" in advertised
    cpu = cfg.cluster.has_gpu_groups or "CPU" in advertised
    if gpu and not cpu:
        log.warning(
            "GPU-tagged workers but no CPU-tagged ones: read/mask tasks may also run on GPU "
            "workers (start CPU workers with --resources CPU=<threads> to keep them apart)"
        )
    return ({"GPU": 1} if gpu else None), ({"CPU": 1} if cpu else None)
