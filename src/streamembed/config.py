"""The one typed configuration object, loaded from config.yaml (+ env overrides) and validated once.

Environment overrides use ``STREAMEMBED__SECTION__KEY=value`` (value parsed as YAML), e.g.
``STREAMEMBED__CLUSTER__N_WORKERS=4``. Credentials never live here: see ``credentials.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .acquisition import BANDS_L1C, BANDS_L2A, MGRS_TILE
from .layout import OutputLayout
from .storage import is_remote

ENV_PREFIX = "STREAMEMBED__"
# Sections of config.yaml that belong to the harness commands (demo, bench), not the runtime.
HARNESS_SECTIONS = ("demo", "bench")
# Where an item of a STAC API may point its assets beside the API's own host (sources/reach.py):
# the object stores of CDSE (the eodata bucket, its HTTPS hosts), Earth Search (the
# sentinel-cogs bucket) and Planetary Computer (Azure blob storage).
DEFAULT_ALLOWED_HOSTS: tuple[str, ...] = (
    "eodata",
    "*.dataspace.copernicus.eu",
    "sentinel-cogs",
    "sentinel-cogs.s3.us-west-2.amazonaws.com",
    "*.blob.core.windows.net",
)


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the key and the fix."""


class Section(BaseModel):
    """A config section: unknown keys are errors (a typo never silently means a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


SectionT = TypeVar("SectionT", bound=BaseModel)


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


class WorkerGroup(Section):
    """One kind of worker: a jobqueue job template or a Kubernetes worker group."""

    name: str = "cpu"
    n_workers: int = Field(1, ge=0, description="jobs (jobqueue) or pods (kubernetes) to start")
    gpus: int = Field(0, ge=0, description=">0: tagged GPU=<gpus>; encode tasks run only here")
    cores: int = Field(1, ge=1, description="cores per job / pod")
    memory: str = Field("4GB", description="memory per job / pod")
    processes: int = Field(1, ge=1, description="worker processes per job (cores split)")
    queue: str | None = None
    account: str | None = None
    walltime: str = "04:00:00"
    interface: str | None = Field(None, description="network interface, e.g. ib0")
    job_extra_directives: tuple[str, ...] = Field((), description="e.g. [--gres=gpu:1]")
    job_script_prologue: tuple[str, ...] = Field(
        (), description="shell lines before the worker starts: module load, conda activate"
    )
    worker_extra_args: tuple[str, ...] = ()
    local_directory: str | None = None
    log_directory: str | None = None
    job_options: dict[str, Any] = Field(
        default_factory=dict,
        description="any other dask-jobqueue Job option (e.g. resource_spec for PBS)",
    )
    image: str | None = Field(
        None, description="kubernetes: container image (default: cluster.image)"
    )
    env: dict[str, str] = Field(default_factory=dict, description="plain environment variables")


class TLSConfig(Section):
    ca_file: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file or self.cert or self.key)


class ClusterConfig(Section):
    kind: Literal["local", "slurm", "pbs", "kubernetes", "address"] = "local"
    # local
    n_workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    dashboard_address: str = ":8787"
    # address
    address: str | None = None
    tls: TLSConfig = TLSConfig()
    # slurm | pbs | kubernetes
    groups: tuple[WorkerGroup, ...] = (WorkerGroup(),)
    adapt_minimum: int | None = Field(
        None, ge=0, description="adaptive scaling: min jobs/pods (local: worker processes)"
    )
    adapt_maximum: int | None = Field(
        None, ge=1, description="adaptive scaling: max jobs/pods (local: worker processes)"
    )
    scheduler_interface: str | None = None
    # kubernetes
    name: str = "streamembed"
    namespace: str | None = None
    image: str = "ghcr.io/streamembed/streamembed:latest"
    secret: str | None = Field(
        "cdse-credentials", description="Kubernetes secret whose keys become worker env vars"
    )

    @model_validator(mode="after")
    def _groups(self) -> ClusterConfig:
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"cluster.groups names must be unique, got {names}")
        if not self.groups:
            raise ValueError("cluster.groups needs at least one worker group")
        if self.adapt_maximum is not None and len(self.groups) > 1:
            raise ValueError(
                "adaptive scaling (cluster.adapt_maximum) works on one worker group; with "
                "several groups give each a fixed n_workers"
            )
        return self

    @property
    def has_gpu_groups(self) -> bool:
        # For kind address the groups describe the running cluster (e.g. the generated
        # Kubernetes deployment), so GPU workers still queued are expected, not guessed.
        return self.kind != "local" and any(g.gpus for g in self.groups)


class PipelineConfig(Section):
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="acquisitions being read/encoded at once (null: as many as keep the block "
        "queue full, at most 2 per worker thread)",
    )
    max_blocks_in_flight: int | None = Field(
        None, ge=1, description="block tasks submitted at once (null: 2 per worker thread)"
    )
    poll_seconds: float = Field(300.0, gt=0)
    outage_max_wait_seconds: float = Field(
        3600.0, gt=0, description="while the source is down, polls back off up to this"
    )
    wait_seconds: float = Field(
        5.0, gt=0, description="how often the driver loop wakes while tasks run (no time limit)"
    )


class WebhookConfig(Section):
    url: str | None = Field(
        None,
        description="POST a GeoJSON summary of each new anomaly file here (null: off); a token "
        "belongs in the URL's query only if the receiver needs one: it is never logged",
    )
    attempts: int = Field(8, ge=1, description="tries per file before it is counted as failed")
    backoff_seconds: float = Field(2.0, gt=0, description="first wait between tries, doubling")
    max_backoff_seconds: float = Field(300.0, gt=0)
    timeout_seconds: float = Field(10.0, gt=0)


class DaemonConfig(Section):
    metrics_port: int | None = Field(
        9464,
        ge=0,
        le=65535,
        description="`streamembed monitor` serves /metrics, /healthz and /readyz here "
        "(0: any free port, null: off)",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="address the metrics server binds: loopback on a laptop; 0.0.0.0 where a "
        "Prometheus elsewhere scrapes it (the Kubernetes manifests)",
    )
    stale_polls: float = Field(
        3.0, gt=0, description="/healthz fails when the loop has not turned for this many polls"
    )
    webhook: WebhookConfig = WebhookConfig()


class ServeConfig(Section):
    host: str = Field(
        "127.0.0.1",
        description="`streamembed serve` binds here; beyond loopback, set credentials in the "
        "environment (docs/operations.md, Security)",
    )
    port: int = Field(8000, ge=0, le=65535)
    max_download_rows: int = Field(
        200_000, gt=0, description="the largest view /api/download returns (413 beyond it)"
    )
    basemap: str | None = Field(
        None,
        description="XYZ tile URL template under the anomalies, e.g. "
        "https://tile.openstreetmap.org/{z}/{x}/{y}.png (null: none; a basemap needs internet)",
    )
    refresh_seconds: float = Field(10.0, gt=0, description="how often the page looks for news")


class SimilarityConfig(Section):
    index_on_commit: bool = Field(
        False,
        description="add each run's new acquisitions to the tiles' similarity indexes when the "
        "run ends (else `streamembed similar` adds them on its next query); building took "
        "210 s for two full-tile acquisitions on the 2-core dev VM (benchmarks/RESULTS.md)",
    )
    min_clear: float = Field(0.9, ge=0, le=1, description="cells indexed: clear fraction")


class Config(Section):
    output: str = Field(
        "output",
        description="folder or object-store URL (s3://bucket/prefix, gs://, az://) of the "
        "embedding store, tile state and anomalies",
    )
    ledger: str | None = Field(
        None,
        description="local path of the SQLite ledger; default ledger.sqlite inside a local "
        "output (required when output is a URL)",
    )
    source: SourceConfig = SourceConfig()
    ingest: IngestConfig = IngestConfig()
    model: ModelConfig = ModelConfig()
    store: StoreConfig = StoreConfig()
    stats: StatsConfig = StatsConfig()
    cluster: ClusterConfig = ClusterConfig()
    pipeline: PipelineConfig = PipelineConfig()
    daemon: DaemonConfig = DaemonConfig()
    serve: ServeConfig = ServeConfig()
    similarity: SimilarityConfig = SimilarityConfig()

    @model_validator(mode="after")
    def _blocks_on_chunks(self) -> Config:
        chunk_px = self.store.chunk_cells * self.ingest.cell_size
        if self.ingest.block_px % chunk_px:
            raise ValueError(
                f"ingest.block_px={self.ingest.block_px} must be a multiple of "
                f"store.chunk_cells x ingest.cell_size = {chunk_px} px, so that blocks written "
                "at once never share a store chunk"
            )
        return self

    @model_validator(mode="after")
    def _ledger_is_local(self) -> Config:
        if self.ledger is not None and is_remote(self.ledger):
            raise ValueError(
                f"ledger={self.ledger}: the ledger is SQLite and must be a local path "
                "(the outputs may be a URL, the ledger may not)"
            )
        return self

    @property
    def layout(self) -> OutputLayout:
        """Where each output lives under ``output`` (and the ledger)."""
        return OutputLayout(self.output, self.ledger)

    def with_overrides(self, **dotted: Any) -> Config:
        """A copy with ``{"source.path": ...}``-style overrides applied and re-validated."""
        data = self.model_dump()
        for key, value in dotted.items():
            _set_dotted(data, key.split("."), value)
        return _validate(data, origin="command line")


def _set_dotted(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(path)}: {part} is not a section")
    node[path[-1]] = value


def _format_error(err: ValidationError, origin: str, root: type[BaseModel], prefix: str) -> str:
    lines = []
    for item in err.errors():
        key = ".".join([prefix] * bool(prefix) + [str(p) for p in item["loc"]]) or "(top level)"
        if item["type"] == "extra_forbidden":
            valid = _valid_keys(root, item["loc"][:-1])
            if root is Config and len(item["loc"]) == 1:
                valid = sorted([*valid, *HARNESS_SECTIONS])
            lines.append(f"{origin}: unknown key '{key}'; valid keys here: {', '.join(valid)}")
        else:
            lines.append(f"{origin}: {key}: {item['msg']}")
    return "\n".join(lines)


def _valid_keys(model: type[BaseModel], parent: tuple[Any, ...]) -> list[str]:
    for part in parent:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


def _validate(data: Mapping[str, Any], origin: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, origin, Config, "")) from None


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Dotted overrides from ``STREAMEMBED__A__B=value`` variables (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if name.startswith(ENV_PREFIX):
            dotted = ".".join(name[len(ENV_PREFIX) :].lower().split("__"))
            out[dotted] = yaml.safe_load(raw)
    return out


def _read_document(
    path: str | Path | None, environ: Mapping[str, str] | None
) -> tuple[dict[str, Any], str]:
    """The file's sections with the environment overrides applied, and where they came from."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} not found; pass --config PATH or create it")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping of sections at the top level")
        data = loaded
        origin = str(p)
    env = env_overrides(os.environ if environ is None else environ)
    for key, value in env.items():
        _set_dotted(data, key.split("."), value)
    if env:
        origin += " + STREAMEMBED__* environment"
    return data, origin


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate config.yaml; a missing default file means the built-in defaults.

    The harness sections (``demo``, ``bench``) may share the file; the runtime ignores them
    and their commands read them with :func:`load_section`.
    """
    data, origin = _read_document(path, environ)
    return _validate({k: v for k, v in data.items() if k not in HARNESS_SECTIONS}, origin)


def load_section(
    path: str | Path | None,
    name: str,
    model: type[SectionT],
    environ: Mapping[str, str] | None = None,
) -> SectionT:
    """One harness section of the same file (and ``STREAMEMBED__<NAME>__*``), validated alone."""
    data, origin = _read_document(path, environ)
    try:
        return model.model_validate(data.get(name) or {})
    except ValidationError as err:
        raise ConfigError(_format_error(err, origin, model, name)) from None
