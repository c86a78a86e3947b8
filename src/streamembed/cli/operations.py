"""The operations commands: ``serve`` (the read-only web map over an output) and ``manifests``
(the Kubernetes objects of a deployment of this config)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..config import Config
from .common import common


def cmd_serve(args: argparse.Namespace, cfg: Config) -> int:
    from ..operations.web import serve

    sc = cfg.serve
    host, port = args.host or sc.host, sc.port if args.port is None else args.port
    basemap = args.basemap or sc.basemap
    print(
        f"streamembed map of {cfg.layout.root}: http://{host}:{port}/  (Ctrl-C stops)", flush=True
    )
    serve(cfg.layout, host, port, basemap, sc.refresh_seconds, sc.max_download_rows)
    return 0


def cmd_manifests(args: argparse.Namespace, cfg: Config) -> int:
    from ..deployment.deploy import write_manifests

    if cfg.cluster.kind != "kubernetes":
        print(
            f"note: cluster.kind is {cfg.cluster.kind}; the manifests describe a kubernetes "
            "deployment of the same config",
            file=sys.stderr,
        )
    for path in write_manifests(cfg, args.o):
        print(f"wrote {path}")
    return 0


def add_commands(sub: Any) -> None:
    """The serve, manifests commands."""
    p = common(sub.add_parser("serve", help="web map of the anomalies (follows a running daemon)"))
    p.add_argument("--host", default=None, help="address to bind (default serve.host)")
    p.add_argument("--port", type=int, default=None, help="port (default serve.port, 8000)")
    p.add_argument("--basemap", default=None, help="XYZ tile URL template (default: none)")
    p.set_defaults(func=cmd_serve)
    p = common(sub.add_parser("manifests", help="Kubernetes manifests (DaskCluster, daemon)"))
    p.add_argument("-o", default="cluster/kubernetes", help="output folder")
    p.set_defaults(func=cmd_manifests)
