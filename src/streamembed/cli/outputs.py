"""The commands that read the outputs: ``status`` (the ledger per tile), ``map`` (a PNG of a
tile's anomalies), ``export`` (Major TOM GeoParquet) and ``similar`` (the cells most like one)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .. import storage
from ..config import Config
from .common import common, print_lines

if TYPE_CHECKING:
    from ..outputs.ledger import Ledger


def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    from ..outputs.ledger import Ledger

    path = cfg.layout.ledger
    if not path.exists():
        print(f"no ledger at {path}; nothing has run with --output {cfg.output}")
        return 1
    with Ledger(path) as ledger:
        if args.json:
            import dataclasses
            import json

            from ..operations.metrics import ledger_numbers

            print(json.dumps(dataclasses.asdict(ledger_numbers(ledger)), indent=1))
            return 0
        print_lines(_status_table(ledger))
        print_lines(_warm_up_lines(cfg))
        print_lines(_failure_lines(ledger, args.failed))
        print_lines(_revision_lines(ledger, args.revisions))
    return 0


def _revision_lines(ledger: Ledger, listing: bool) -> list[str]:
    """Applied looks whose anomaly rows were rewritten when a late look was folded in."""
    revised = ledger.revisions()
    if not revised:
        return []
    if not listing:
        return [f"revisions: {len(revised)} (`streamembed status --revisions` lists them)"]
    return [f"revised {acq} (by {by}): {a} -> {b} anomaly rows" for acq, by, a, b in revised]


def _warm_up_lines(cfg: Config) -> list[str]:
    """Per tile with a checkpoint: cells still warming up, cells with the seasonal model."""
    from ..detection.state import warm_up

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
    from ..acquisition import parse_datetime
    from ..outputs.ledger import State

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
    from ..outputs.ledger import State

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
    from ..products.anomaly_map import render_map

    png = render_map(cfg.layout, args.tile, args.date, args.o)
    print(f"wrote {png}")
    return 0


def cmd_export(args: argparse.Namespace, cfg: Config) -> int:
    from ..products.export import ExportFilter, export

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
    from ..outputs.similar import similar

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


def add_commands(sub: Any) -> None:
    """The status, map, export, similar commands."""
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
