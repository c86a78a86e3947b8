"""streamembed monitor | backfill | status | map | evaluate | synth | demo | bench | manifests."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import storage
from .acquisition import SourceError
from .config import DETECTORS, Config, ConfigError, load_config, load_section
from .layout import OutputFullError
from .storage import StorageError

if TYPE_CHECKING:
    from .harness.demo import DemoConfig
    from .outputs.ledger import Ledger

log = logging.getLogger("streamembed")
DEFAULT_CONFIG = "config.yaml"


def _setup_logging(verbose: bool, fmt: str = "text", quiet_events: bool = False) -> None:
    from .operations.logs import JsonFormatter, text_formatter

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
    from .credentials import redact_logs

    redact_logs()


def _config_path(args: argparse.Namespace) -> str | None:
    path: str = args.config
    if path == DEFAULT_CONFIG and not Path(path).exists():
        return None  # built-in defaults; every key is documented in the shipped config.yaml
    return path


def _demo_config(args: argparse.Namespace) -> DemoConfig:
    from .harness.demo import DemoConfig

    return load_section(_config_path(args), "demo", DemoConfig)


def _config(args: argparse.Namespace) -> Config:
    cfg = load_config(_config_path(args))
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


def _print(lines: list[str]) -> None:
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


def _preflight(cfg: Config) -> str | None:
    """What is wrong with the source or output before any cluster starts, or None."""
    src = cfg.source
    if not src.is_stac_api and not Path(src.path).exists():
        return f"source {src.path} does not exist; pass --source FOLDER or a STAC API URL"
    if not cfg.layout.remote and Path(cfg.output).is_file():
        return f"output {cfg.output} is a file; --output names a folder (or s3://…)"
    return None


# Worker core-seconds of one 10980 px tile acquisition on the CPU (benchmarks/RESULTS.md: the
# many-tiles planet arithmetic for COGs, "JPEG 2000" for SAFE products); a dry run scales them
# by the tile's area.
CORE_SECONDS_PER_FULL_TILE = {"cog": 391.0, "jp2": 583.0}


def _asset_bytes(href: str) -> int | None:
    """A local band file's size (a /vsizip/ member's stored size), None where remote."""
    import zipfile

    from .runtime.tilecache import vsizip_parts

    parts = vsizip_parts(href)
    if parts is not None:
        try:
            with zipfile.ZipFile(parts[0]) as zf:
                return zf.getinfo(parts[1]).compress_size
        except (OSError, KeyError, zipfile.BadZipFile):
            return None
    if "://" in href:
        return None
    try:
        return Path(href).stat().st_size
    except OSError:
        return None


def _dry_run(cfg: Config, retry_failed: bool, poll: bool = False) -> int:
    """What a backfill (``poll``: the monitor's next poll) would do, per tile, without starting
    a cluster or writing anything."""
    from .acquisition import parse_datetime
    from .outputs.ledger import Ledger, State
    from .runtime.ingest import IngestError, required_assets
    from .sources import discover_for, explain_nothing, source_key

    states: dict[str, State] = {}
    newest: dict[str, Any] = {}  # tile -> its newest applied look's time
    watermark = None
    if cfg.layout.ledger.exists():
        with Ledger(cfg.layout.ledger) as ledger:
            watermark = ledger.watermark(source_key(cfg)) if poll else None
            acqs, failures = discover_for(cfg, watermark)
            states = ledger.states(a.id for a in acqs)
            newest = {t: parse_datetime(p.newest_applied) for t, p in ledger.progress().items()
                      if p.newest_applied}  # fmt: skip
    else:
        acqs, failures = discover_for(cfg)
    final = {State.APPLIED, State.SKIPPED, State.LATE}
    todo = [
        a for a in acqs
        if states.get(a.id) not in final and (retry_failed or states.get(a.id) != State.FAILED)
    ]  # fmt: skip
    what = "the next monitor poll" if poll else "a backfill"
    since = f" since the watermark {watermark:%Y-%m-%d %H:%M}" if watermark else ""
    print(f"dry run of {what}: {len(acqs)} acquisitions in the source{since} ({len(failures)} "
          f"unreadable), {len(acqs) - len(todo)} already done or failed, {len(todo)} to "
          "process; nothing is written", flush=True)  # fmt: skip
    late = [a for a in todo if a.tile in newest and a.datetime <= newest[a.tile]]
    if late:
        bound = (f"up to stats.allowed_lateness_days ({cfg.stats.allowed_lateness_days:g}) back, "
                 "older ones stay late" if poll else "any age")  # fmt: skip
        print(
            f"  {len(late)} of them older than their tile's newest applied look: folded in "
            f"by rewinding the tile and replaying the looks after them ({bound})",
            flush=True,
        )
    print("  " + ("tile      acquisitions  first .. last"), flush=True)
    if not acqs:
        _print(explain_nothing(cfg))
    by_tile: dict[str, list[Any]] = {}
    for a in todo:
        by_tile.setdefault(a.tile, []).append(a)
    total_bytes, unknown, core_s = 0, 0, 0.0
    for tile, tile_acqs in sorted(by_tile.items()):
        first, last = min(a.datetime for a in tile_acqs), max(a.datetime for a in tile_acqs)
        print(f"  {tile:<9} {len(tile_acqs):>12}  {first:%Y-%m-%d} .. {last:%Y-%m-%d}")
        for a in tile_acqs:
            try:
                keys = required_assets(a, cfg.ingest, cfg.model)
            except IngestError:
                keys = list(a.assets)
            hrefs = [a.assets[k].href for k in keys if k in a.assets]
            sizes = [_asset_bytes(h) for h in hrefs]
            total_bytes += sum(s for s in sizes if s is not None)
            unknown += sum(s is None for s in sizes)
            ref = a.grid_asset()
            area = 1.0
            if ref is not None and ref.shape is not None and ref.transform is not None:
                px = ref.transform[0] / 10.0
                area = ref.shape[0] * ref.shape[1] * px * px / 10980**2
            kind = "jp2" if any(h.lower().endswith(".jp2") for h in hrefs) else "cog"
            core_s += CORE_SECONDS_PER_FULL_TILE[kind] * area
    remote = f" (+{unknown} remote files not sized)" if unknown else ""
    print(f"to read: {total_bytes / 2**30:.2f} GiB{remote}; estimated {core_s:,.0f} worker "
          f"core-seconds on CPUs like this benchmark's (benchmarks/RESULTS.md)", flush=True)  # fmt: skip
    return EXIT_OK if acqs else EXIT_EMPTY


def cmd_backfill(args: argparse.Namespace, cfg: Config) -> int:
    from .deployment.cluster import make_client
    from .outputs.ledger import Ledger
    from .runtime.pipeline import Pipeline
    from .sources import explain_nothing

    problem = _preflight(cfg)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if getattr(args, "dry_run", False):
        return _dry_run(cfg, args.retry_failed)
    with make_client(cfg.cluster) as client:
        print(f"Dask dashboard: {client.dashboard_link}", flush=True)
        pipe = Pipeline(cfg, client)
        try:
            report = pipe.run(retry_failed=args.retry_failed, progress=not args.no_progress)
        finally:
            pipe.close()
    if report.discovered == 0:
        with Ledger(cfg.layout.ledger) as ledger:
            ever = len(ledger.states())
        _print([f"The source yielded no acquisition: {cfg.source.path}", *explain_nothing(cfg)])
        if not ever:
            print("nothing from this source was ever processed (exit 4)", flush=True)
            return EXIT_EMPTY
    _print(report.lines())
    _print(_where(cfg))
    if report.failed:
        out = f"--output {cfg.layout.root}" + (
            f" --ledger {cfg.layout.ledger}" if cfg.layout.remote else ""
        )
        _print([
            f"{len(report.failed)} acquisition(s) failed (exit 3): "
            f"`streamembed status --failed {out}` lists them with their reasons; once mended, "
            f"`streamembed backfill --retry-failed {out} --source {cfg.source.path}` "
            "tries them again.",
        ])  # fmt: skip
        return EXIT_FAILED
    return EXIT_OK


def _where(cfg: Config) -> list[str]:
    out = cfg.layout
    return [
        f"embeddings: {out.store}  (xarray.open_zarr('{out.store}/TILE'))",
        f"anomalies:  {out.anomalies}  (geopandas.read_parquet(path))",
        f"ledger:     {out.ledger}  (streamembed status --output {out.root}"
        + (f" --ledger {out.ledger})" if out.remote else ")"),
    ]


def cmd_monitor(args: argparse.Namespace, cfg: Config) -> int:
    from .deployment.cluster import make_client
    from .operations.daemon import Daemon
    from .runtime.pipeline import RunReport

    if getattr(args, "dry_run", False):
        problem = _preflight(cfg)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_USAGE
        return _dry_run(cfg, retry_failed=False, poll=True)

    stop = threading.Event()

    def _handle(signum: int, _frame: Any) -> None:
        log.info("signal %s: finishing in-flight acquisitions, then checkpointing", signum)
        stop.set()

    def _report(report: RunReport) -> None:
        if not report.nothing_new:
            _print(report.lines())

    signal.signal(signal.SIGINT, _handle)
    signal.signal(signal.SIGTERM, _handle)
    poll = args.poll_seconds or cfg.pipeline.poll_seconds
    with make_client(cfg.cluster) as client:
        print(f"Dask dashboard: {client.dashboard_link}", flush=True)
        print(f"monitoring {cfg.source.path} every {poll:g} s; Ctrl-C stops cleanly", flush=True)
        daemon = Daemon(cfg, client, poll, stop)
        try:
            daemon.run(args.cycles, _report)
        finally:
            daemon.close()
    print("monitor stopped; state checkpointed.", flush=True)
    return 0


def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    from .outputs.ledger import Ledger

    path = cfg.layout.ledger
    if not path.exists():
        print(f"no ledger at {path}; nothing has run with --output {cfg.output}")
        return 1
    with Ledger(path) as ledger:
        if args.json:
            import dataclasses
            import json

            from .operations.metrics import ledger_numbers

            print(json.dumps(dataclasses.asdict(ledger_numbers(ledger)), indent=1))
            return 0
        _print(_status_table(ledger))
        _print(_warm_up_lines(cfg))
        _print(_failure_lines(ledger, args.failed))
        _print(_revision_lines(ledger, args.revisions))
    return 0


def _revision_lines(ledger: Ledger, listing: bool) -> list[str]:
    """Applied looks whose anomaly rows were rewritten when a late look was folded in."""
    revised = ledger.revisions()
    if not revised:
        return []
    if not listing:
        return [f"revisions: {len(revised)} (`streamembed status --revisions` lists them)"]
    return [f"revised {acq} (by {by}): {a} -> {b} anomaly rows" for acq, by, a, b in revised]


def cmd_rebuild(args: argparse.Namespace, cfg: Config) -> int:
    import datetime as dt

    from .deployment.cluster import make_client
    from .runtime.pipeline import Pipeline
    from .runtime.rebuild import rebuild

    since = None
    if args.since:
        try:
            since = dt.datetime.fromisoformat(args.since)
        except ValueError:
            print(f"error: --from {args.since!r} is not a date (YYYY-MM-DD)", file=sys.stderr)
            return EXIT_USAGE
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.timezone.utc)
    if not cfg.layout.ledger.exists():
        print(f"error: no ledger at {cfg.layout.ledger}; nothing has run with --output "
              f"{cfg.output}", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    with make_client(cfg.cluster) as client:
        pipe = Pipeline(cfg, client)
        try:
            for tile in args.tile:
                try:
                    done = rebuild(pipe, tile, since)
                except ValueError as err:
                    print(f"error: {err}", file=sys.stderr)
                    return EXIT_USAGE
                _print(done.lines())
        finally:
            pipe.close()
    return EXIT_OK


def _warm_up_lines(cfg: Config) -> list[str]:
    """Per tile with a checkpoint: cells still warming up, cells with the seasonal model."""
    from .detection.stats import warm_up

    lines = []
    for path in storage.glob(cfg.layout.state_dir, "*.npz"):
        w = warm_up(path, cfg.stats.min_obs)
        tile = path.rsplit("/", 1)[-1].removesuffix(".npz")
        lines.append(
            f"{tile:<8}cells {w.cells}: {w.cells - w.scored} warming up (under "
            f"{cfg.stats.min_obs} clear looks), {w.seasonal} with the seasonal expectation "
            "(a year of clear looks)"
        )
    return lines


def _status_table(ledger: Ledger) -> list[str]:
    """Per tile: acquisitions by state, anomaly rows, newest sensed and applied, their lag."""
    from .acquisition import parse_datetime
    from .outputs.ledger import State

    states = tuple(State)
    lines = [
        f"{'tile':<8}" + "".join(f"{s:>10}" for s in states) + f"{'anomalies':>11}"
        + f"  {'newest sensed':<17}{'newest applied':<17}lag"
    ]  # fmt: skip
    progress = ledger.progress()
    for tile, counts in ledger.summary().items():
        p = progress[tile]
        sensed, applied, n_anom = p.newest_sensed, p.newest_applied, p.anomaly_rows
        lag = "-" if applied is None else (
            f"{(parse_datetime(sensed) - parse_datetime(applied)).total_seconds() / 86400:.1f} d"
        )  # fmt: skip
        lines.append(
            f"{tile:<8}" + "".join(f"{counts.get(s, 0):>10}" for s in states) + f"{n_anom:>11}"
            + f"  {sensed[:16]:<17}{(applied or 'none')[:16]:<17}{lag}"
        )  # fmt: skip
    return lines


def _failure_lines(ledger: Ledger, listing: bool) -> list[str]:
    from .outputs.ledger import State

    counts = ledger.failure_counts()
    if not counts:
        return []
    by_class = ", ".join(f"{k} {v}" for k, v in counts.items())
    lines = [f"failures by class: {by_class}"]
    if not listing:
        return [*lines, "`streamembed status --failed` lists them with their reasons"]
    for r in ledger.rows(State.FAILED):
        lines.append(f"failed {r.id}: {r.reason}")
    for key, _, reason in ledger.source_failures():
        lines.append(f"unreadable {key}: {reason}")
    return lines


def cmd_map(args: argparse.Namespace, cfg: Config) -> int:
    from .products.anomaly_map import render_map

    png = render_map(cfg.layout, args.tile, args.date, args.o)
    print(f"wrote {png}")
    return 0


def cmd_export(args: argparse.Namespace, cfg: Config) -> int:
    from .products.export import ExportFilter, export

    flt = ExportFilter(tuple(args.tile or ()), args.start, args.end, args.min_clear)
    report = export(
        cfg.layout, args.dest, args.mode, flt, progress=not args.no_progress,
        fragment_embedding=args.fragment_embedding, cfg=cfg,
    )  # fmt: skip
    print(f"exported {report.rows} {args.mode} embeddings of {report.acquisitions} "
          f"acquisitions to {len(report.files)} GeoParquet file(s) in {args.dest}")  # fmt: skip
    for f in report.files:
        print(f"  {f}  (geopandas.read_parquet, duckdb read_parquet)")
    return 0


def cmd_similar(args: argparse.Namespace, cfg: Config) -> int:
    from .outputs.similar import similar

    matches = similar(cfg.layout, args.tile, args.date, args.y, args.x, args.k, args.in_tile,
                      args.exact, args.other_places, cfg.similarity.min_clear)  # fmt: skip
    how = "exact search" if args.exact else "the similarity index"
    print(f"{len(matches)} cells most like {args.tile} {args.date} cell {args.y}/{args.x} "
          f"({how}):")  # fmt: skip
    print(f"{'similarity':>10}  {'tile':<6} {'date':<10} {'cell y/x':>8}  acquisition")
    for m in matches:
        print(f"{m.similarity:>10.4f}  {m.tile:<6} {m.date:<10} {m.cell_y:>4}/{m.cell_x:<3}  "
              f"{m.acquisition_id}")  # fmt: skip
    return 0


def cmd_serve(args: argparse.Namespace, cfg: Config) -> int:
    from .operations.web import serve

    sc = cfg.serve
    host, port = args.host or sc.host, sc.port if args.port is None else args.port
    basemap = args.basemap or sc.basemap
    print(
        f"streamembed map of {cfg.layout.root}: http://{host}:{port}/  (Ctrl-C stops)", flush=True
    )
    serve(cfg.layout, host, port, basemap, sc.refresh_seconds, sc.max_download_rows)
    return 0


def cmd_bench(args: argparse.Namespace, cfg: Config) -> int:
    from .harness.bench import BenchConfig, plot, run_bench

    bench = load_section(args.config, "bench", BenchConfig)
    results = Path(args.output_dir or bench.output)
    if bench.many_tiles and not args.plot_only:
        from .harness.bench.many_tiles import run_many_tiles

        print(f"record: {run_many_tiles(cfg, bench, results)}")
        return 0
    if not args.plot_only:
        record, path = run_bench(cfg, bench, results)
        print(f"record: {path}")
        print(f"summary row: {bench.results_md}")
        if record.pipeline_share_of_raw_encoder is not None:
            print(f"pipeline_share_of_raw_encoder: {record.pipeline_share_of_raw_encoder:.2f}")
        else:
            print(record.gpu_note or "not measured")
    if args.plot or args.plot_only:
        png = plot(results, results / "benchmarks.png")
        print(f"plot: {png}")
    return 0


def cmd_manifests(args: argparse.Namespace, cfg: Config) -> int:
    from .deployment.deploy import write_manifests

    if cfg.cluster.kind != "kubernetes":
        print(
            f"note: cluster.kind is {cfg.cluster.kind}; the manifests describe a kubernetes "
            "deployment of the same config",
            file=sys.stderr,
        )
    for path in write_manifests(cfg, args.o):
        print(f"wrote {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace, cfg: Config) -> int:
    from .harness.evaluate import evaluate

    if getattr(args, "scenarios", None):
        return _evaluate_scenarios(args, cfg)
    if not args.truth:
        raise ValueError("give a truth GeoParquet, or --scenarios all (or names) to run the set")
    result = evaluate(cfg.layout.anomalies, args.truth)
    _print(result.lines())
    return 0


def _evaluate_scenarios(args: argparse.Namespace, cfg: Config) -> int:
    from .harness import fieldsim
    from .harness.evaluation import (
        render_maps,
        render_markdown,
        render_real_series,
        run_real_series,
        run_scenarios,
    )
    from .harness.scenarios import SCENARIOS

    t0 = time.time()
    second = [fieldsim.scenario_name(s) for s in (*fieldsim.TUNING_SEEDS, *fieldsim.HELD_OUT_SEEDS)]
    names = [*SCENARIOS, *second] if args.scenarios == "all" else args.scenarios.split(",")
    detectors = DETECTORS if args.detector == "all" else (args.detector,)
    work = Path(args.work)
    runs = run_scenarios(cfg, work, names, detectors, progress=not args.no_progress)
    encoders = []
    if args.encoders:
        from .harness.evaluation import run_encoders

        archs = args.encoders.split(",")
        # the scenario set only: the second generator's halves score the configured encoder
        set_names = [n for n in names if fieldsim.seed_of(n) is None]
        set_runs = [r for r in runs if r.name in set_names]
        encoders = run_encoders(cfg, work, archs, set_names, not args.no_progress, set_runs)
    if args.doc:
        import os

        doc = Path(args.doc)
        maps = render_maps(runs, work / "data", doc.parent / "evaluation")
        shared = Path(os.environ.get("STREAMEMBED_SHARED", "../shared"))
        folder = shared / "data" / "s2" / "eolearn_slovenia_2015_2017"
        real, real_png = None, None
        if folder.is_dir():
            real = run_real_series(folder, cfg)
            render_real_series(real, doc.parent / "evaluation" / "real-ndvi-series.png")
            real_png = "evaluation/real-ndvi-series.png"
        text = render_markdown(runs, time.time() - t0, "make evaluate", real, real_png, encoders,
                               cfg.stats.detector)  # fmt: skip
        doc.write_text(text)
        print(f"wrote {doc} and {len(maps)} map(s) in {doc.parent / 'evaluation'}")
    print(f"evaluation finished in {time.time() - t0:.0f} s")
    return 0


def cmd_synth(args: argparse.Namespace, cfg: Config) -> int:
    from .harness.demo import write_demo_archive, write_fullsize_archive
    from .harness.fullsize import IN_MEMORY_MAX_PX

    demo = _demo_config(args)
    tile_px = args.tile_px or demo.tile_px
    out = Path(args.outdir)
    if args.level == "L1C" and args.format != "safe":
        print("streamembed synth: L1C is written as SAFE only: add --format safe", file=sys.stderr)
        return 2
    if tile_px > IN_MEMORY_MAX_PX or args.format == "safe":
        items = write_fullsize_archive(out, demo, args.days, tile_px, args.tiles or 1,
                                       args.format, args.level, args.zip)  # fmt: skip
        print(f"items: {items}\n(products written strip by strip plant no events: no truth file)")
        return 0
    cell = cfg.ingest.cell_size
    items, truth = write_demo_archive(out, demo, cell, args.days, tile_px, args.tiles or 2)
    print(f"items: {items}\ntruth: {truth}")
    return 0


def cmd_demo(args: argparse.Namespace, cfg: Config) -> int:
    """The embedded default: synthetic archive -> local cluster backfill -> evaluation -> map."""
    from .harness.demo import write_demo_archive

    t0 = time.time()
    demo = _demo_config(args)
    data = Path(demo.data)
    truth = data / "truth.parquet"
    if not truth.exists():
        print(
            f"Writing the synthetic demo archive to {data} (real COGs + STAC items) …", flush=True
        )
        write_demo_archive(data, demo, cfg.ingest.cell_size)
    else:
        print(f"Using the synthetic demo archive in {data}", flush=True)
    cfg = cfg.with_overrides(**{"source.path": str(data / "items")})
    args.retry_failed = False
    cmd_backfill(args, cfg)
    print("\nEvaluation against the planted events (seeded encoder):", flush=True)
    cmd_evaluate(argparse.Namespace(truth=str(truth)), cfg)
    from .outputs.sink import read_anomalies
    from .products.anomaly_map import render_map

    anomalies = read_anomalies(cfg.layout.anomalies)
    if len(anomalies):
        # The acquisition with the most anomalous cells makes the most telling picture.
        top = anomalies.groupby(["mgrs_tile", "acquisition_id"]).size().idxmax()
        when = anomalies.loc[anomalies["acquisition_id"] == top[1], "datetime"].iloc[0]
        local = cfg.layout.local_root or Path()
        png = render_map(cfg.layout, str(top[0]), when.strftime("%Y-%m-%d"), local / "demo-map.png")
        print(f"map: {png}  (streamembed map {top[0]} {when:%Y-%m-%d} -o {png})")
    print(f"demo finished in {time.time() - t0:.0f} s", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamembed", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config", default=DEFAULT_CONFIG, help="config file (default ./config.yaml)"
        )
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

    p = common(
        sub.add_parser(
            "backfill", help="process everything the source has (resumable)", epilog=EXIT_CODES
        )
    )
    p.add_argument("--retry-failed", action="store_true", help="try failed acquisitions again")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--dry-run", action="store_true",
        help="list what would be processed per tile, bytes to read and estimated core-seconds; "
        "starts no cluster, writes nothing",
    )  # fmt: skip
    detector(p)
    filters(p)
    p.set_defaults(func=cmd_backfill)
    p = common(sub.add_parser("monitor", help="poll the source and process what is new"))
    detector(p)
    filters(p)
    p.add_argument("--poll-seconds", type=float, default=None)
    p.add_argument(
        "--dry-run", action="store_true",
        help="what the next poll would process (from the source's watermark), per tile; starts "
        "no cluster, writes nothing",
    )  # fmt: skip
    p.add_argument(
        "--cycles", type=int, default=0, help="stop after N polls (0: run until signalled)"
    )
    p.set_defaults(func=cmd_monitor)
    p = common(sub.add_parser("status", help="ledger summary per tile"))
    p.add_argument("--failed", action="store_true", help="list failed acquisitions and reasons")
    p.add_argument(
        "--revisions", action="store_true",
        help="list applied acquisitions whose anomaly rows a late look rewrote",
    )  # fmt: skip
    p.add_argument(
        "--json", action="store_true", help="the numbers of the daemon's /metrics, as JSON"
    )
    p.set_defaults(func=cmd_status)
    p = common(sub.add_parser(
        "rebuild",
        help="fold a tile's late looks into its statistics, or replay it from a date",
        description="Rewind each --tile to a kept checkpoint before its oldest late look (or "
        "--from DATE) and replay its stored looks in sensing order; their anomaly files are "
        "rewritten and the revisions recorded (streamembed status --revisions).",
    ))  # fmt: skip
    p.add_argument("--tile", action="append", required=True, help="MGRS tile (repeatable)")
    p.add_argument("--from", dest="since", default=None,
                   help="replay every look sensed on or after this date (YYYY-MM-DD)")  # fmt: skip
    p.set_defaults(func=cmd_rebuild)
    p = common(sub.add_parser("map", help="anomaly cells over an RGB quicklook (PNG)"))
    p.add_argument("tile")
    p.add_argument("date", help="YYYY-MM-DD")
    p.add_argument("-o", default="map.png", help="output PNG")
    p.set_defaults(func=cmd_map)
    p = common(sub.add_parser(
        "export", help="embeddings to GeoParquet in the Major TOM schema (per cell or fragment)"
    ))  # fmt: skip
    p.add_argument("dest", help="folder for <tile>.parquet")
    p.add_argument(
        "--mode", choices=["cell", "fragment"], default="cell",
        help="cell: one row per 320 m cell; fragment: Major TOM's 224 px fragments",
    )  # fmt: skip
    p.add_argument(
        "--fragment-embedding", choices=["cells", "encoder"], default="cells",
        help="cells: the clear-weighted mean of the 7 x 7 stored cells under a fragment "
        "(cheap); encoder: re-read the fragment's pixels and run the model as Major TOM's "
        "embedder does (the CDSE Global Embeddings' vectors, same weights; docs/export.md)",
    )  # fmt: skip
    p.add_argument("--tile", action="append", help="only this tile (repeatable)")
    p.add_argument("--start", help="first sensing date, YYYY-MM-DD")
    p.add_argument("--end", help="last sensing date, YYYY-MM-DD")
    p.add_argument("--min-clear", type=float, default=0.9, help="clear fraction to keep a row")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_export)
    p = common(sub.add_parser("similar", help="the cells most like one cell, across the store"))
    p.add_argument("tile")
    p.add_argument("date", help="YYYY-MM-DD: the acquisition of the query cell")
    p.add_argument("y", type=int, help="cell row")
    p.add_argument("x", type=int, help="cell column")
    p.add_argument("-k", type=int, default=20, help="how many (default 20)")
    p.add_argument("--in-tile", action="append", help="search only this tile (repeatable)")
    p.add_argument("--exact", action="store_true", help="exact search instead of the index")
    p.add_argument(
        "--other-places", action="store_true", help="leave out the query cell's other dates"
    )
    p.set_defaults(func=cmd_similar)
    p = common(sub.add_parser("serve", help="web map of the anomalies (follows a running daemon)"))
    p.add_argument("--host", default=None, help="address to bind (default serve.host)")
    p.add_argument("--port", type=int, default=None, help="port (default serve.port, 8000)")
    p.add_argument("--basemap", default=None, help="XYZ tile URL template (default: none)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("bench", help="throughput benchmark (benchmarks/*.yaml profiles)")
    p.add_argument("--config", default="benchmarks/cpu-local.yaml", help="benchmark profile")
    p.add_argument(
        "--output", dest="output_dir", help="folder for the JSON records (default bench.output)"
    )
    p.add_argument("--plot", action="store_true", help="also draw benchmarks.png from all records")
    p.add_argument("--plot-only", action="store_true", help="only draw the plot")
    p.set_defaults(func=cmd_bench)
    p = common(sub.add_parser("manifests", help="Kubernetes manifests (DaskCluster, daemon)"))
    p.add_argument("-o", default="cluster/kubernetes", help="output folder")
    p.set_defaults(func=cmd_manifests)
    p = common(sub.add_parser(
        "evaluate", help="precision/recall against a truth GeoParquet, or the scenario set"
    ))  # fmt: skip
    p.add_argument("truth", nargs="?", help="truth GeoParquet of the run in --output")
    p.add_argument(
        "--scenarios", default=None,
        help="all (the scenario set and the second generator's tuning and held-out seeds), or "
        "comma-separated names (fieldsim-<seed> for any seed of the second generator): "
        "synthesise, backfill and score each",
    )  # fmt: skip
    p.add_argument(
        "--detector", default="all", choices=["all", *DETECTORS],
        help="the detectors scored on the scenarios (default: all, side by side; one of them "
        "also runs the backfill)",
    )  # fmt: skip
    p.add_argument("--work", default="evaluation", help="scenario archives and runs")
    p.add_argument(
        "--encoders", default=None,
        help="comma-separated model.arch values: the embedding detectors again with each "
        "(seeded) encoder, in a table of their own",
    )  # fmt: skip
    p.add_argument("--doc", default=None, help="write this Markdown table (and maps beside it)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)
    p = common(sub.add_parser("synth", help="write the synthetic archive (COGs + STAC + truth)"))
    p.add_argument("outdir")
    p.add_argument("--days", type=int, default=None)
    p.add_argument(
        "--tile-px", type=int, default=None,
        help="tile size (default demo.tile_px); 10980 for real-size products (past 2048 px "
        "they are written strip by strip, without planted events)",
    )  # fmt: skip
    p.add_argument(
        "--tiles", type=int, default=None,
        help="MGRS tiles (default 2): the demo's two, then real tile codes over many UTM zones "
        "(thousands for a scale run; full-size products: 1 or 2)",
    )  # fmt: skip
    p.add_argument(
        "--format", choices=("cog", "safe"), default="cog",
        help="cog: COGs + STAC items (the demo's events below 2048 px); safe: SAFE products "
        "with JPEG 2000 bands and ESA's metadata XML, as CDSE serves them (no planted events)",
    )  # fmt: skip
    p.add_argument(
        "--level",
        choices=("L2A", "L1C"),
        default="L2A",
        help="L1C: top-of-atmosphere, 13 bands, no SCL (with --format safe)",
    )
    p.add_argument("--zip", action="store_true", help="each SAFE product as a .zip download")
    p.set_defaults(func=cmd_synth)
    p = common(sub.add_parser("demo", help="synthetic data + local cluster + evaluation + map"))
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(
        args.verbose,
        getattr(args, "log_format", "text"),
        quiet_events=args.command != "monitor" and not getattr(args, "no_progress", False),
    )
    try:
        cfg = _config(args)
        return int(args.func(args, cfg))
    except ConfigError as err:
        print(f"configuration error:\n{err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, SourceError, OutputFullError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
