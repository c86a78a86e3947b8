"""The runtime's commands: ``backfill`` (everything the source has, resumable), ``monitor``
(the daemon: poll and process what is new) and ``rebuild`` (fold a tile's late looks in)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..config import Config
from .common import (
    EXIT_CODES,
    EXIT_EMPTY,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    common,
    detector,
    filters,
    log,
    preflight,
    print_lines,
    where,
)

# Worker core-seconds of one 10980 px tile acquisition on the CPU (benchmarks/RESULTS.md: the
# many-tiles planet arithmetic for COGs, "JPEG 2000" for SAFE products); a dry run scales them
# by the tile's area.
CORE_SECONDS_PER_FULL_TILE = {"cog": 391.0, "jp2": 583.0}


def _asset_bytes(href: str) -> int | None:
    """A local band file's size (a /vsizip/ member's stored size), None where remote."""
    import zipfile

    from ..runtime.tilecache import vsizip_parts

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
    from ..acquisition import parse_datetime
    from ..outputs.ledger import Ledger, State
    from ..runtime.ingest import IngestError, required_assets
    from ..sources import discover_for, explain_nothing, source_key

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
        print_lines(explain_nothing(cfg))
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
    from ..deployment.cluster import make_client
    from ..outputs.ledger import Ledger
    from ..runtime.pipeline import Pipeline
    from ..sources import explain_nothing

    problem = preflight(cfg)
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
        print_lines(
            [f"The source yielded no acquisition: {cfg.source.path}", *explain_nothing(cfg)]
        )
        if not ever:
            print("nothing from this source was ever processed (exit 4)", flush=True)
            return EXIT_EMPTY
    print_lines(report.lines())
    print_lines(where(cfg))
    if report.failed:
        out = f"--output {cfg.layout.root}" + (
            f" --ledger {cfg.layout.ledger}" if cfg.layout.remote else ""
        )
        print_lines([
            f"{len(report.failed)} acquisition(s) failed (exit 3): "
            f"`streamembed status --failed {out}` lists them with their reasons; once mended, "
            f"`streamembed backfill --retry-failed {out} --source {cfg.source.path}` "
            "tries them again.",
        ])  # fmt: skip
        return EXIT_FAILED
    return EXIT_OK


def cmd_monitor(args: argparse.Namespace, cfg: Config) -> int:
    from ..deployment.cluster import make_client
    from ..operations.daemon import Daemon
    from ..runtime.report import RunReport

    if getattr(args, "dry_run", False):
        problem = preflight(cfg)
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
            print_lines(report.lines())

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


def cmd_rebuild(args: argparse.Namespace, cfg: Config) -> int:
    import datetime as dt

    from ..deployment.cluster import make_client
    from ..runtime.pipeline import Pipeline
    from ..runtime.rebuild import rebuild

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
                print_lines(done.lines())
        finally:
            pipe.close()
    return EXIT_OK


def add_commands(sub: Any) -> None:
    """The backfill, monitor, rebuild commands."""
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
