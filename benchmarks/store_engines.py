"""Icechunk against the plain-Zarr store, at full tile size, on local disk and on an S3 API.

    python benchmarks/store_engines.py [--acquisitions 2] [--json results/storage/store-engines.json]

One full MGRS tile per acquisition: 343 x 343 embedding cells x 2048 dims float16 (482 MB) and
the per-cell clear fraction, written as the pipeline writes it (36 blocks of 64 x 64 cells, the
store's chunks), then committed; then one acquisition read back whole. For each engine and
backend: seconds per append and per read, bytes stored per acquisition, and what a writer
killed (SIGKILL) after writing its blocks and before committing leaves to readers and to the
restart. Also: whether two writers appending to one tile at once both commit.

- ``zarr``: streamembed's ``EmbeddingStore`` (begin / write_block / commit, the readers' view
  published last);
- ``icechunk``: one Icechunk repository per tile, one session and one commit per acquisition.

The S3 backend is moto's server on 127.0.0.1 (in memory): its seconds measure the protocol's
round trips on this machine, not a cloud provider's bandwidth.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np

CELLS, DIM, CHUNK = 343, 2048, 64
TILE = "33UWP"
T0 = dt.datetime(2024, 5, 1, 10, tzinfo=dt.timezone.utc)


def _embedding(seed: int) -> np.ndarray:
    # Encoder features are dense and near-Gaussian: they compress about as little as this.
    rng = np.random.default_rng(seed)
    return rng.standard_normal((CELLS, CELLS, DIM), dtype=np.float32).astype(np.float16)


def _blocks() -> list[tuple[tuple[int, int], tuple[int, int]]]:
    edges = range(0, CELLS, CHUNK)
    return [((y, min(y + CHUNK, CELLS)), (x, min(x + CHUNK, CELLS))) for y in edges for x in edges]


# ------------------------------------------------------------------ engines


class ZarrEngine:
    """streamembed's store: begin, one write_block per block, commit."""

    name = "zarr"

    def __init__(self, root: str):
        from streamembed.grid import TileGrid
        from streamembed.outputs.store import EmbeddingStore, Provenance
        from streamembed.indices import INDEX_NAMES

        self.root = root
        self.store = EmbeddingStore(root)
        self.grid = TileGrid(TILE, 32633, 499980.0, 5400000.0, CELLS * 32, CELLS * 32)
        self.k = len(INDEX_NAMES)
        self.prov = Provenance(
            "bench", "seeded", True, "resnet50", ("B01",), "dn/1e4", 256, 16, (0,)
        )

    def append(self, i: int, emb: np.ndarray, die_before_commit: bool = False) -> None:
        res = self.store.begin(f"acq{i}", self.grid, DIM, self.prov)
        assert res is not None
        for cy, cx in _blocks():
            shape = (cy[1] - cy[0], cx[1] - cx[0])
            self.store.write_block(
                res, cy, cx, emb[cy[0] : cy[1], cx[0] : cx[1]], np.ones(shape, np.float32),
                np.zeros(shape, np.float32), np.zeros((*shape, self.k), np.float32),
            )  # fmt: skip
        if die_before_commit:
            os.kill(os.getpid(), signal.SIGKILL)
        self.store.commit(res, T0 + dt.timedelta(days=5 * i))

    def read(self, i: int) -> np.ndarray:
        return self.store.read(TILE, f"acq{i}").embedding

    def visible(self) -> list[str]:
        import xarray as xr

        ds = xr.open_zarr(f"{self.root}/{TILE}")  # a plain reader
        return [str(v) for v in ds.acquisition_id.values]


class IcechunkEngine:
    """One repository per tile; per acquisition a reservation commit (Icechunk forks only a
    session without uncommitted changes), the blocks written through forks as workers would,
    merged, and one commit."""

    name = "icechunk"

    def __init__(self, root: str):
        import icechunk as ic
        import zarr

        self.root = root
        if root.startswith("s3://"):
            bucket, prefix = root[5:].split("/", 1)
            storage = ic.s3_storage(
                bucket=bucket, prefix=prefix, endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                allow_http=True, force_path_style=True, region="us-east-1",
                access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            )  # fmt: skip
        else:
            storage = ic.local_filesystem_storage(root)
        self.repo = ic.Repository.open_or_create(storage)
        try:
            made = "embedding" in zarr.open_group(
                self.repo.readonly_session("main").store, mode="r"
            )
        except zarr.errors.GroupNotFoundError:  # a new repository has no root group yet
            made = False
        if not made:
            s = self.repo.writable_session("main")
            g = zarr.group(store=s.store)
            g.create_array("embedding", shape=(0, CELLS, CELLS, DIM), chunks=(1, CHUNK, CHUNK, DIM),
                           dtype="float16", dimension_names=("time", "y", "x", "dim"))  # fmt: skip
            g.create_array("clear", shape=(0, CELLS, CELLS), chunks=(1, CHUNK, CHUNK),
                           dtype="float32", dimension_names=("time", "y", "x"))  # fmt: skip
            g.create_array("acquisition_id", shape=(0,), chunks=(4096,), dtype=str,
                           dimension_names=("time",))  # fmt: skip
            s.commit("create the tile")
        self.fork_bytes = 0

    def append(self, i: int, emb: np.ndarray, die_before_commit: bool = False) -> None:
        import pickle

        import zarr

        s = self.repo.writable_session("main")
        g = zarr.open_group(s.store, mode="r+")
        row = g["embedding"].shape[0]
        for name in ("embedding", "clear", "acquisition_id"):
            arr = g[name]
            arr.resize((row + 1, *arr.shape[1:]))
        s.commit(f"reserve row {row} for acq{i}")  # visible: a row of fill values, no id
        s = self.repo.writable_session("main")
        done = []
        for cy, cx in _blocks():
            blob = pickle.dumps(s.fork())  # what travels to a worker
            fork = pickle.loads(blob)
            wg = zarr.open_group(fork.store, mode="r+")
            wg["embedding"][row, cy[0] : cy[1], cx[0] : cx[1]] = emb[cy[0] : cy[1], cx[0] : cx[1]]
            wg["clear"][row, cy[0] : cy[1], cx[0] : cx[1]] = 1.0
            back = pickle.dumps(fork)  # and back to the driver
            self.fork_bytes = max(self.fork_bytes, len(blob), len(back))
            done.append(pickle.loads(back))
        s.merge(*done)
        zarr.open_group(s.store, mode="r+")["acquisition_id"][row] = f"acq{i}"
        if die_before_commit:
            os.kill(os.getpid(), signal.SIGKILL)
        s.commit(f"acq{i}")

    def read(self, i: int) -> np.ndarray:
        import zarr

        g = zarr.open_group(self.repo.readonly_session("main").store, mode="r")
        ids = [str(v) for v in g["acquisition_id"][:]]
        return np.asarray(g["embedding"][ids.index(f"acq{i}")])

    def visible(self) -> list[str]:
        import xarray as xr

        ds = xr.open_zarr(self.repo.readonly_session("main").store, consolidated=False)
        return [str(v) for v in ds.acquisition_id.values]


ENGINES = {"zarr": ZarrEngine, "icechunk": IcechunkEngine}


# ------------------------------------------------------------------ measurement


def _bytes(root: str) -> int:
    if root.startswith("s3://"):  # listed afresh: Icechunk writes behind s3fs's cache
        import boto3

        bucket, prefix = root[5:].split("/", 1)
        pages = (
            boto3.client("s3")
            .get_paginator("list_objects_v2")
            .paginate(Bucket=bucket, Prefix=prefix + "/")
        )
        return sum(o["Size"] for page in pages for o in page.get("Contents", []))
    from streamembed.storage import tree_bytes

    return tree_bytes(root)


def _killed_writer(engine: str, root: str, i: int) -> int:
    """Append acquisition ``i`` in a child process SIGKILLed just before its commit."""
    here = str(Path(__file__).parent)
    code = (
        f"import sys; sys.path.insert(0, {here!r}); import store_engines as b; "
        f"e = b.ENGINES[{engine!r}]({root!r}); "
        f"e.append({i}, b._embedding({i}), die_before_commit=True)"
    )
    return subprocess.run([sys.executable, "-c", code], check=False).returncode


def measure(engine: str, root: str, n: int) -> dict[str, Any]:
    e = ENGINES[engine](root)
    base = _bytes(root)
    appends, reads = [], []
    for i in range(n):
        emb = _embedding(i)
        t0 = time.perf_counter()
        e.append(i, emb)
        appends.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        back = e.read(i)
        reads.append(time.perf_counter() - t0)
        assert np.array_equal(back, emb)
    stored = _bytes(root)
    rc = _killed_writer(engine, root, n)
    e = ENGINES[engine](root)  # a fresh process would open it so
    after_kill = e.visible()
    orphan = _bytes(root) - stored
    t0 = time.perf_counter()
    e.append(n, _embedding(n))  # the restart
    restart = time.perf_counter() - t0
    final = e.visible()
    record = {
        "engine": engine,
        "backend": "s3 (moto server)" if root.startswith("s3://") else "local disk",
        "acquisitions": n,
        "append_s": appends,
        "read_s": reads,
        "bytes_per_acquisition": (stored - base) / n,
        "killed_before_commit": {
            "exit": rc,
            "readers_see": after_kill,
            "orphan_bytes": orphan,
            "restart_append_s": restart,
            "after_restart": final,
        },
    }
    if engine == "icechunk":
        record["fork_pickle_bytes"] = e.fork_bytes
    return record


def concurrent_appends(engine: str, root: str) -> str:
    """Two writers append one acquisition each to the same tile at the same time."""
    if engine != "icechunk":
        return "both commit: rows are reserved one after the other, blocks never share a chunk"
    import icechunk as ic
    import zarr

    e = IcechunkEngine(root)
    sessions = [e.repo.writable_session("main") for _ in range(2)]
    for s in sessions:
        g = zarr.open_group(s.store, mode="r+")
        arr = g["clear"]
        row = arr.shape[0]
        arr.resize((row + 1, *arr.shape[1:]))
        arr[row] = 1.0
    sessions[0].commit("first")
    try:
        sessions[1].commit("second")
        return "both commit"
    except ic.ConflictError:
        try:
            sessions[1].rebase(ic.BasicConflictSolver())
            sessions[1].commit("second, rebased")
            return "the second conflicts; rebased and committed"
        except Exception as err:
            return f"the second conflicts and cannot be rebased: {type(err).__name__}"


def _moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        with suppress(OSError):
            urllib.request.urlopen(url, timeout=1).read()
            break
        time.sleep(0.2)
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret", AWS_ENDPOINT_URL=url,
        AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1",
    )  # fmt: skip
    import boto3

    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="bench")
    return proc, url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--acquisitions", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the records here")
    parser.add_argument("--backends", default="local,s3")
    parser.add_argument("--engines", default=",".join(ENGINES))
    args = parser.parse_args()
    records = []
    moto = None
    with tempfile.TemporaryDirectory(prefix="store-engines-") as tmp:
        for backend in args.backends.split(","):
            if backend == "s3" and moto is None:
                moto, _ = _moto()
            for engine in args.engines.split(","):
                root = (
                    f"{tmp}/{engine}/embeddings" if backend == "local" else f"s3://bench/{engine}"
                )
                rec = measure(engine, root, args.acquisitions)
                rec["two_writers_one_tile"] = concurrent_appends(engine, root + "-conflict")
                records.append(rec)
                print(json.dumps(rec), flush=True)
    if moto is not None:
        moto.terminate()
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    print("\n| engine | backend | append s | read s | MB per acquisition | killed before commit |")
    print("|---|---|---|---|---|---|")
    for r in records:
        k = r["killed_before_commit"]
        print(
            f"| {r['engine']} | {r['backend']} | {np.median(r['append_s']):.1f} | "
            f"{np.median(r['read_s']):.1f} | {r['bytes_per_acquisition'] / 1e6:.0f} | readers see "
            f"{len(k['readers_see'])} acquisitions, {k['orphan_bytes'] / 1e6:.0f} MB orphaned, "
            f"restart leaves {len(k['after_restart'])} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
