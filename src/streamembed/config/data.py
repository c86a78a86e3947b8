"""The sections of the data path: where acquisitions come from (``source``), how they are read
(``ingest``), the encoder (``model``), the embedding store (``store``) and detection
(``stats``)."""

from __future__ import annotations

import re
from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from ..acquisition import BANDS_L1C, BANDS_L2A, MGRS_TILE
from .base import DEFAULT_ALLOWED_HOSTS, Section


class SourceConfig(Section):
    kind: Literal["auto", "local", "stac"] = Field(
        "auto", description="auto: a URL is a STAC API, anything else a local folder"
    )
    path: str = Field("demo-data/items", description="local folder, or the STAC API root URL")
    band_mapping: Literal["auto", "cdse", "earth-search", "planetary-computer"] | dict[str, str] = (
        "auto"
    )
    collection: str = "sentinel-2-l2a"
    bbox: tuple[float, float, float, float] | None = Field(
        None, description="area of interest west, south, east, north in degrees (EPSG:4326)"
    )
    aoi_file: str | None = Field(None, description="area of interest: a GeoJSON or GeoParquet file")
    tiles: tuple[str, ...] = Field((), description="MGRS tiles to keep, e.g. [33UWP]")
    start: str | None = Field(None, description="first sensing date (ISO), inclusive")
    end: str | None = Field(None, description="last sensing date (ISO), inclusive; null: now")
    max_cloud_cover: float = Field(100.0, ge=0, le=100)
    page_size: int = Field(100, ge=1, le=10000)
    overlap_days: float = Field(
        10.0, ge=0, description="polls look back this far behind the watermark (late products)"
    )
    timeout_seconds: float = Field(30.0, gt=0)
    max_retries: int = Field(5, ge=0)
    allowed_hosts: tuple[str, ...] = Field(
        DEFAULT_ALLOWED_HOSTS,
        description="hosts (fnmatch patterns; an s3:// URL's host is its bucket) an item of a "
        "STAC API may point its assets at, beside the API's own host; its items may name no "
        "local path or file:// URL. Default: the object stores of CDSE, Earth Search and "
        "Planetary Computer; ['*']: any host",
    )

    @field_validator("tiles")
    @classmethod
    def _mgrs(cls, tiles: tuple[str, ...]) -> tuple[str, ...]:
        out = tuple(t.upper().removeprefix("MGRS-").removeprefix("T") for t in tiles)
        bad = [t for t in out if not re.fullmatch(MGRS_TILE, t)]
        if bad:
            raise ValueError(f"not MGRS tile names: {bad}; write them like 33UWP")
        return out

    @property
    def is_stac_api(self) -> bool:
        if self.kind == "auto":
            return self.path.startswith(("http://", "https://"))
        return self.kind == "stac"


class IngestConfig(Section):
    cell_size: int = Field(32, description="pixels per embedding cell at 10 m (= encoder stride)")
    window: int = Field(256, description="core window in pixels, a multiple of cell_size")
    margin: int = Field(32, description="context pixels on each side, a multiple of cell_size")
    block_px: int = Field(
        2048,
        gt=0,
        description="side of a block of cells in pixels: one read/encode/store task per block; "
        "a multiple of store.chunk_cells x cell_size",
    )
    resampling: Literal["nearest", "bilinear"] = "nearest"
    http_retries: int = Field(
        5, ge=0, description="GDAL's retries of one HTTP request (429/5xx), with back-off"
    )
    read_attempts: int = Field(
        3,
        ge=1,
        description="attempts at a block read while its error is transient (timeout, "
        "throttling, 5xx, reset): then the acquisition is failed",
    )
    read_backoff_seconds: float = Field(
        5.0, ge=0, description="wait before the second attempt, doubled before each next one"
    )
    decode_cache_mib: int = Field(
        384,
        ge=0,
        description="decoded JPEG 2000 tiles a worker keeps between blocks (MiB; 0: off): a "
        "block's margins touch its neighbours' tiles (docs/operations.md)",
    )
    scl_mask_classes: tuple[int, ...] = (0, 1, 3, 8, 9, 10, 11)
    cloud_mask: Literal["auto", "scl", "computed", "asset", "none"] = Field(
        "auto",
        description="auto: the L2A scene classification (SCL), and for L1C products (no SCL) "
        "the mask computed from the bands; scl: SCL only (an L1C product fails); computed: "
        "from the bands always (s2cloudless clouds, projected shadows, NDSI snow); asset: a "
        "cloud-mask raster named in each item; none: only nodata",
    )
    cloud_mask_asset: str = Field("CLM", description="asset key of the mask for cloud_mask: asset")

    @model_validator(mode="after")
    def _multiples(self) -> IngestConfig:
        for key in ("window", "margin"):
            value = getattr(self, key)
            if value % self.cell_size or value < 0:
                raise ValueError(
                    f"ingest.{key}={value} must be a non-negative multiple of "
                    f"ingest.cell_size={self.cell_size}"
                )
        if self.window == 0:
            raise ValueError("ingest.window must be positive")
        return self


class ModelConfig(Section):
    arch: Literal["resnet18", "resnet50", "vit_small_patch16_224", "vit_base_patch16_224"] = Field(
        "resnet50",
        description="the backbone, by timm's name: ResNet cells are its stride-32 map, ViT cells "
        "the mean of a cell's 2 x 2 16 px patch tokens",
    )
    bands: tuple[str, ...] = BANDS_L2A
    checkpoint: str | None = None
    normalisation: Literal["divide_10000", "ssl4eo_minmax"] = "divide_10000"
    seed: int = 0
    batch_size: int = 4
    device: Literal["auto", "cpu", "cuda"] = "auto"
    runtime: Literal["torch", "openvino", "onnxruntime"] = Field(
        "openvino",
        description="where the forward pass runs on a CPU: PyTorch, or the same network "
        "converted to OpenVINO or ONNX Runtime per worker (checked against PyTorch on a probe "
        "when converted; benchmarks/RESULTS.md 'Encoder speed'); a GPU always runs PyTorch",
    )
    torch_threads: int = 1

    @field_validator("bands")
    @classmethod
    def _known_bands(cls, bands: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [b for b in bands if b not in BANDS_L1C]
        if unknown:
            raise ValueError(f"unknown band(s) {unknown}; use names from {list(BANDS_L1C)}")
        if len(bands) not in (12, 13):
            raise ValueError(
                f"{len(bands)} bands given; SSL4EO-S12 encoders take 13 (L1C) or 12 (L2A, no B10)"
            )
        return bands


StoreDtype = Literal["float16", "float32", "int8"]
Compression = Literal["zstd", "blosc-zstd-shuffle", "none"]


class StoreConfig(Section):
    dtype: StoreDtype = Field(
        "int8",
        description="embedding dtype; int8 (default): per-cell affine quantisation (a scale and "
        "an offset per cell, embedding_scale / embedding_offset), half float16's bytes with the "
        "same detections (benchmarks/RESULTS.md, storage budget)",
    )
    compression: Compression = Field(
        "zstd", description="codec of the embedding chunks (benchmarks/RESULTS.md, storage budget)"
    )
    chunk_cells: int = 64


Detector = Literal["embedding+index", "embedding", "index"]
DETECTORS: tuple[str, ...] = get_args(Detector)


class StatsConfig(Section):
    half_life_days: float = Field(20.0, gt=0)
    min_obs: int = Field(6, ge=2)
    min_clear: float = Field(0.9, ge=0, le=1)
    min_context_clear: float = Field(0.8, ge=0, le=1)
    threshold: float = Field(2.5, gt=0)
    min_index_change: float = Field(
        0.25, ge=0, description="a sudden change departs this far from the seasonal expectation "
        "on NDVI, NBR or MNDWI (index units)",
    )  # fmt: skip
    min_step: float = Field(
        0.2, ge=0, description="... and stepped this far since the cell's last clear look (a "
        "change that built up over many looks is gradual, not sudden)",
    )  # fmt: skip
    min_novelty: float = Field(
        0.1, ge=0, description="... and went this far past the most changed state the cell "
        "showed in the past year, or around this date last year once it has a year (a harvest "
        "returns to the field's own bare season)",
    )  # fmt: skip
    gradual_threshold: float = Field(
        0.1, gt=0, description="the gradual test: a cell's decline built up look by look "
        "(NDVI, each look's share clipped to 0.03) that raises a gradual alert",
    )  # fmt: skip
    gradual_min_loss: float = Field(
        0.08, gt=0, description="... when its NDVI is also at least this far below its "
        "seasonal expectation",
    )  # fmt: skip
    detector: Detector = Field(
        "embedding+index",
        description="embedding+index: a step past the cell's own seasons on its indices "
        "(change.py), or half its departure with the embedding z-score; embedding: the z-score "
        "alone; index: per-cell seasonal index z-scores (the baseline)",
    )
    index_threshold: float = Field(4.0, gt=0, description="z of the index detector")
    confirm_looks: int = Field(
        2, ge=1, description="anomalous clear looks that confirm an alert (the first included)"
    )
    recover_index_change: float = Field(
        0.15,
        gt=0,
        description="a confirmed alert recovers when NDVI, MNDWI and NBR are back "
        "within this of the expectation before it began",
    )
    spatial_correction: bool = True
    shards: int = Field(1, ge=1)
    checkpoint_every: int = Field(1, ge=1)
    allowed_lateness_days: float = Field(
        30.0,
        ge=0,
        description="the daemon folds a look older than its tile's newest applied one into "
        "the statistics (rewind and replay) when it is at most this much older; an older one "
        "stays late until `streamembed rebuild`. Checkpoints of this span are kept for it",
    )
    state_dtype: Literal["float32", "float16"] = Field(
        "float16",
        description="the expected embeddings' type in memory and in checkpoints (computed in "
        "float32 either way); a state keeps the type it was started with",
    )
    state_block_cells: int = Field(
        32,
        ge=1,
        description="a tile state's expected embeddings are checkpointed in blocks of this "
        "many cells a side: an apply reads the blocks its clear cells fall in and writes those "
        "it changed",
    )
    max_state_mib: float = Field(
        2048.0,
        gt=0,
        description="tile states an actor shard keeps in memory; past it, the least recently "
        "applied tiles are checkpointed and evicted (reloaded when next applied)",
    )
