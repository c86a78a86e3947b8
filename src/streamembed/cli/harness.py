"""The harness's commands: ``bench`` (the throughput suite), ``evaluate`` (against a truth file,
or the scenario set and the second generator), ``synth`` (synthetic archives) and ``demo`` (the
embedded default: synthetic data, a local cluster, the evaluation and a map)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..config import DETECTORS, Config, load_section
from .common import common, demo_config, print_lines
from .run import cmd_backfill


def cmd_bench(args: argparse.Namespace, cfg: Config) -> int:
    from ..harness.bench import BenchConfig, plot, run_bench

    bench = load_section(args.config, "bench", BenchConfig)
    results = Path(args.output_dir or bench.output)
    if bench.many_tiles and not args.plot_only:
        from ..harness.bench.many_tiles import run_many_tiles

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


def cmd_evaluate(args: argparse.Namespace, cfg: Config) -> int:
    from ..harness.evaluate import evaluate

    if getattr(args, "scenarios", None):
        return _evaluate_scenarios(args, cfg)
    if not args.truth:
        raise ValueError("give a truth GeoParquet, or --scenarios all (or names) to run the set")
    result = evaluate(cfg.layout.anomalies, args.truth)
    print_lines(result.lines())
    return 0


def _evaluate_scenarios(args: argparse.Namespace, cfg: Config) -> int:
    from ..harness import fieldsim
    from ..harness.evaluation import run_scenarios
    from ..harness.evaluation_report import render_maps, render_markdown
    from ..harness.real_series import render_real_series, run_real_series
    from ..harness.scenarios import SCENARIOS

    t0 = time.time()
    second = [fieldsim.scenario_name(s) for s in (*fieldsim.TUNING_SEEDS, *fieldsim.HELD_OUT_SEEDS)]
    names = [*SCENARIOS, *second] if args.scenarios == "all" else args.scenarios.split(",")
    detectors = DETECTORS if args.detector == "all" else (args.detector,)
    work = Path(args.work)
    runs = run_scenarios(cfg, work, names, detectors, progress=not args.no_progress)
    encoders = []
    if args.encoders:
        from ..harness.evaluation import run_encoders

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
    from ..harness.demo import write_demo_archive, write_fullsize_archive
    from ..harness.fullsize import IN_MEMORY_MAX_PX

    demo = demo_config(args)
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
    from ..harness.demo import write_demo_archive

    t0 = time.time()
    demo = demo_config(args)
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
    from ..outputs.sink import read_anomalies
    from ..products.anomaly_map import render_map

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


def add_commands(sub: Any) -> None:
    """The bench, evaluate, synth, demo commands."""
    p = sub.add_parser("bench", help="throughput benchmark (benchmarks/*.yaml profiles)")
    p.add_argument("--config", default="benchmarks/cpu-local.yaml", help="benchmark profile")
    p.add_argument(
        "--output", dest="output_dir", help="folder for the JSON records (default bench.output)"
    )
    p.add_argument("--plot", action="store_true", help="also draw benchmarks.png from all records")
    p.add_argument("--plot-only", action="store_true", help="only draw the plot")
    p.set_defaults(func=cmd_bench)
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
