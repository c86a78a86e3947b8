"""What every command shares: logging, the config with its command-line overrides, the exit
codes, the options common to all commands and the source filters, the checks made before a
cluster starts."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import DETECTORS, Config, ConfigError, load_config, load_section

if TYPE_CHECKING:
    from ..harness.demo import DemoConfig

log = logging.getLogger("streamembed")
DEFAULT_CONFIG = "config.yaml"


def setup_logging(verbose: bool, fmt: str = "text", quiet_events: bool = False) -> None:
    from ..operations.logs import JsonFormatter, text_formatter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else text_formatter())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    if quiet_events and fmt == "text" and not verbose:
        # a line per acquisition would break the progress bar; json logs keep them
        logging.getLogger("streamembed.events").setLevel(logging.WARNING)
    # distributed sets its loggers' levels from the dask config when it is imported (later,
    # by the commands that start a cluster): its routine INFO lines stay out of the CLI.
    import dask

    dask.config.set({"logging.distributed": "warning"})
    for noisy in ("tornado", "bokeh", "asyncio", "rasterio", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pystac-client logs request headers at DEBUG: credentials in them are redacted.
    from ..credentials import redact_logs

    redact_logs()


def config_path(args: argparse.Namespace) -> str | None:
    path: str = args.config
    if path == DEFAULT_CONFIG and not Path(path).exists():
        return None  # built-in defaults; every key is documented in the shipped config.yaml
    return path


def demo_config(args: argparse.Namespace) -> DemoConfig:
    from ..harness.demo import DemoConfig

    return load_section(config_path(args), "demo", DemoConfig)


def config_from_args(args: argparse.Namespace) -> Config:
    cfg = load_config(config_path(args))
    overrides: dict[str, Any] = {}
    if getattr(args, "source", None):
        # A folder or a URL on the command line says what it is, whatever the file's kind.
        overrides["source.path"] = args.source
        overrides["source.kind"] = "auto"
    if getattr(args, "output", None):
        overrides["output"] = args.output
    if getattr(args, "ledger", None):
        overrides["ledger"] = args.ledger
    if getattr(args, "detector", None) not in (None, "all"):
        overrides["stats.detector"] = args.detector
    # The search filters, as config.yaml's source section names them.
    tiles = getattr(args, "filter_tiles", None)
    if tiles:
        overrides["source.tiles"] = [t.strip() for t in tiles.split(",") if t.strip()]
    for key in ("start", "end", "max_cloud_cover"):
        if getattr(args, f"filter_{key}", None) is not None:
            overrides[f"source.{key}"] = getattr(args, f"filter_{key}")
    bbox = getattr(args, "filter_bbox", None)
    if bbox:
        try:
            overrides["source.bbox"] = [float(v) for v in bbox.split(",")]
        except ValueError:
            raise ConfigError(
                f"--bbox {bbox}: give west,south,east,north in degrees, e.g. 10.5,45,11,45.5"
            ) from None
    return cfg.with_overrides(**overrides) if overrides else cfg


def print_lines(lines: list[str]) -> None:
    for line in lines:
        print(line, flush=True)


# Exit codes of backfill (README, --help): a SLURM array, cron or CI step reads them.
EXIT_OK = 0  # everything reached a final good state, or there was nothing new
EXIT_FATAL = 1  # the run itself failed (an error message says why)
EXIT_USAGE = 2  # command line or configuration
EXIT_FAILED = 3  # the run finished, and some acquisitions failed (status --failed lists them)
EXIT_EMPTY = 4  # the source yielded nothing, and the ledger has never seen anything from it
EXIT_CODES = (
    "exit codes: 0 everything reached a final good state, or nothing was new; 1 a fatal error; "
    "2 usage or configuration; 3 some acquisitions failed (`streamembed status --failed` "
    "lists them, `--retry-failed` tries them again); 4 the source yielded nothing and nothing "
    "from it was ever processed"
)


def preflight(cfg: Config) -> str | None:
    """What is wrong with the source or output before any cluster starts, or None."""
    src = cfg.source
    if not src.is_stac_api and not Path(src.path).exists():
        return f"source {src.path} does not exist; pass --source FOLDER or a STAC API URL"
    if not cfg.layout.remote and Path(cfg.output).is_file():
        return f"output {cfg.output} is a file; --output names a folder (or s3://…)"
    return None


def where(cfg: Config) -> list[str]:
    out = cfg.layout
    return [
        f"embeddings: {out.store}  (xarray.open_zarr('{out.store}/TILE'))",
        f"anomalies:  {out.anomalies}  (geopandas.read_parquet(path))",
        f"ledger:     {out.ledger}  (streamembed status --output {out.root}"
        + (f" --ledger {out.ledger})" if out.remote else ")"),
    ]


def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config file (default ./config.yaml)")
    p.add_argument(
        "--log-format", choices=["text", "json"], default="text",
        help="json: one JSON object per line (acquisition id, tile, stage, seconds)",
    )  # fmt: skip
    p.add_argument("--source", help="source folder or URL (overrides source.path)")
    p.add_argument(
        "--output",
        help="output folder or object-store URL, e.g. s3://bucket/run (overrides output; "
        "default ./output)",
    )
    p.add_argument(
        "--ledger",
        help="local path of the SQLite ledger (default OUTPUT/ledger.sqlite; required when "
        "--output is a URL)",
    )
    return p


def filters(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters (override config.yaml's source section)")
    # their own dests: other commands have a --tiles, --start or --end of their own
    g.add_argument("--tiles", dest="filter_tiles",
                   help="MGRS tiles to keep, comma-separated: 33UWP,32UPC")  # fmt: skip
    g.add_argument("--start", dest="filter_start",
                   help="first sensing date, YYYY-MM-DD (inclusive)")  # fmt: skip
    g.add_argument("--end", dest="filter_end",
                   help="last sensing date, YYYY-MM-DD (inclusive)")  # fmt: skip
    g.add_argument(
        "--bbox", dest="filter_bbox",
        help="west,south,east,north in degrees (EPSG:4326); write "
        "--bbox=W,S,E,N when W is negative",
    )  # fmt: skip
    g.add_argument("--max-cloud-cover", dest="filter_max_cloud_cover", type=float,
                   help="percent, 0-100")  # fmt: skip


def detector(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--detector", choices=list(DETECTORS), default=None,
        help="anomaly detector (overrides stats.detector; default embedding+index)",
    )  # fmt: skip
