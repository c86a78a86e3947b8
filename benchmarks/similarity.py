"""Approximate nearest neighbours for `streamembed similar`: which index, measured.

    python benchmarks/similarity.py STORE [--tile T] [--queries 200] [--k 20]
        [--libraries faiss-ivf,faiss,faiss-sq8,usearch] [--raw-cosine] [--no-noise-floor]
        [--json out.json]

Every clear cell of every acquisition in the store's tile (decoded, and centred as `streamembed
similar` centres them: so cosine is an inner product; ``--raw-cosine``: the embeddings as
stored, L2-normalised) is indexed and compared with exact search (NumPy matrix products) on
random query cells: recall@k against exact, query milliseconds, build seconds, index bytes.

- ``faiss-ivf``: the index `streamembed similar` builds (FAISS IVF-flat, lists trained on the
  first acquisition's cells as the tool trains them), searched at several list counts (nprobe);
- ``faiss``: FAISS HNSW over float32 (M, efConstruction as given), at several search breadths
  (efSearch), with the recall after widening its hits to every look of their cells;
- ``faiss-sq8``: the same graph over 8-bit scalar-quantised vectors (a quarter of the memory);
- ``usearch``: USearch HNSW over f16 vectors.

Beside recall, the run reports how many cells tie at exact search's k-th place (within 1e-5),
FAISS's brute force against NumPy's, and the store's own noise floor: the recall of exact
search against itself once every cell is rounded to int8 once more. Ranks that exact search
cannot reproduce under that rounding are below what the store can tell apart.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def load(store_path: str, tile: str | None, min_clear: float) -> tuple[np.ndarray, int, np.ndarray]:
    """The clear cells' vectors, L2-normalised, in one preallocated float32 array (a million
    cells of 2048 dimensions are 8 GiB: no second copy), acquisition by acquisition; how many
    of them are the first acquisition's that has any (the tool's centre is their mean); and
    each vector's cell (flat index in the tile), which its other looks share."""
    from streamembed.outputs.store import EmbeddingStore

    store = EmbeddingStore(store_path)
    tile = tile or store.tiles()[0]
    ds = store.open_dataset(tile)
    dim = ds.sizes["dim"]
    keeps = [ds.clear.isel(time=i).values.reshape(-1) >= min_clear for i in range(ds.sizes["time"])]
    vecs = np.empty((sum(int(k.sum()) for k in keeps), dim), dtype=np.float32)
    at = 0
    for i, keep in enumerate(keeps):
        emb = ds.embedding.isel(time=i).values.reshape(-1, dim)[keep]
        vecs[at : at + len(emb)] = emb
        at += len(emb)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    cells = np.concatenate([np.flatnonzero(k) for k in keeps]).astype(np.int64)
    return vecs, next((int(k.sum()) for k in keeps if k.any()), 0), cells


class Looks:
    """Every look (acquisition) of a cell: the vector ids that share its cell."""

    def __init__(self, cells: np.ndarray):
        self.cells = cells
        self.order = np.argsort(cells, kind="stable")
        self.sorted = cells[self.order]

    def of(self, ids: np.ndarray) -> np.ndarray:
        """The ids of every look of the cells of ``ids``."""
        wanted = np.unique(self.cells[ids[ids >= 0]])
        lo = np.searchsorted(self.sorted, wanted, "left")
        hi = np.searchsorted(self.sorted, wanted, "right")
        return np.concatenate([self.order[a:b] for a, b in zip(lo, hi, strict=True)])


def expanded(index: Any, looks: Looks, query: np.ndarray, found: np.ndarray, k: int) -> np.ndarray:
    """The k best of every look of the cells the index found, scored exactly (the vectors come
    back from the index's own float32 storage)."""
    ids = looks.of(found)
    sims = index.reconstruct_batch(ids) @ query
    return ids[np.argsort(-sims)[:k]]


# FAISS HNSW as `similar` built it until IVF replaced it (RESULTS.md, "At 1 M cells")
HNSW_M, EF_CONSTRUCTION, EF_SEARCH = 16, 128, 64
TIE_EPS = 1e-5  # float32 inner products of 2048-d unit vectors differ by ~1e-6 between orders


@dataclass
class Truth:
    """Exact search's answer for each query, and how many cells tie at its k-th place."""

    ids: np.ndarray  # (queries, k), most similar first
    kth_sim: np.ndarray  # (queries,): the k-th exact similarity
    at_least_kth: np.ndarray  # (queries,): cells as similar as the k-th (k when nothing ties)
    identical: np.ndarray  # (queries,): cells whose vector is the query's own (itself included)
    query_ms: float  # one brute-force query, as `similar --exact` runs it

    @property
    def tied(self) -> np.ndarray:
        return self.at_least_kth > self.ids.shape[1]

    def summary(self) -> dict[str, float]:
        """How far the k-th place is a tie: when many cells are exactly as similar as exact
        search's k-th, which k of them it lists is arbitrary and plain recall cannot reach 1."""
        return {
            "queries_tied_at_k": float(self.tied.mean()),
            "cells_at_least_kth_median": float(np.median(self.at_least_kth)),
            "cells_at_least_kth_p90": float(np.percentile(self.at_least_kth, 90)),
            "cells_at_least_kth_max": float(self.at_least_kth.max()),
            "queries_with_identical_cells": float((self.identical > 1).mean()),
            "identical_cells_median": float(np.median(self.identical)),
        }


BLOCK = 65536  # rows of vectors against all queries in one matrix product


def top_k(
    queries: np.ndarray, blocks: Iterator[tuple[int, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar rows of every query over ``blocks`` ((first row id, rows) in row
    order), as (similarities, ids), unordered within a query: a running top k per block."""
    best_sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), k), dtype=np.int64)
    for start, rows in blocks:
        sims = np.concatenate([best_sims, queries @ rows.T], axis=1)
        ids = np.concatenate(
            [
                best_ids,
                np.broadcast_to(np.arange(start, start + len(rows)), (len(queries), len(rows))),
            ],
            axis=1,
        )
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        best_sims = np.take_along_axis(sims, top, axis=1)
        best_ids = np.take_along_axis(ids, top, axis=1)
    return best_sims, best_ids


def exact(vecs: np.ndarray, queries: np.ndarray, k: int) -> Truth:
    """The true k nearest of every query, computed in row blocks against all queries at once
    (a matrix product per block); a second pass counts the cells tied at the k-th place."""
    blocks = ((start, vecs[start : start + BLOCK]) for start in range(0, len(vecs), BLOCK))
    best_sims, best_ids = top_k(queries, blocks, k)
    order = np.argsort(-best_sims, axis=1)
    kth = np.take_along_axis(best_sims, order, axis=1)[:, -1]
    at_least = np.zeros(len(queries), dtype=np.int64)
    identical = np.zeros(len(queries), dtype=np.int64)
    for start in range(0, len(vecs), BLOCK):
        sims = queries @ vecs[start : start + BLOCK].T
        at_least += (sims >= kth[:, None] - TIE_EPS).sum(axis=1)
        identical += (sims >= 1 - TIE_EPS).sum(axis=1)
    timed = queries[: min(10, len(queries))]
    t0 = time.perf_counter()
    for q in timed:
        sims1 = vecs @ q
        np.argpartition(-sims1, k)[:k]
    query_ms = (time.perf_counter() - t0) / len(timed) * 1000
    return Truth(np.take_along_axis(best_ids, order, axis=1), kth, at_least, identical, query_ms)


def store_noise_floor(vecs: np.ndarray, queries: np.ndarray, truth: Truth, seed: int = 1) -> float:
    """Recall@k of exact search against itself after one more int8 rounding of every cell.

    The store keeps each cell's vector as 256 levels over its own range (``store.quantise``).
    Exact search over the cells moved by one such rounding error (uniform, half a level either
    way) is what the same archive gives when encoded again and stored again: where exact search
    cannot reproduce its own top k, the ranks it disagrees on are below the store's precision,
    and no index can be asked to recover them.
    """
    rng = np.random.default_rng(seed)

    def moved() -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(vecs), BLOCK):
            rows = vecs[start : start + BLOCK]
            level = (rows.max(axis=1, keepdims=True) - rows.min(axis=1, keepdims=True)) / 255
            out = rows + (rng.random(rows.shape, dtype=np.float32) - 0.5) * level
            yield start, out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    _, best_ids = top_k(queries, moved(), truth.ids.shape[1])
    return recall(best_ids, truth.ids)


def exact_agreement(vecs: np.ndarray, queries: np.ndarray, truth: Truth) -> float:
    """Recall@k of FAISS's own brute-force search against NumPy's: two exact searches whose
    inner products differ only in float32 summation order (~1e-6). Where they disagree, the
    k-th place is decided by rounding, and plain recall's ceiling is this, not 1."""
    import faiss

    _, ids = faiss.knn(queries, vecs, truth.ids.shape[1], metric=faiss.METRIC_INNER_PRODUCT)
    return recall(ids, truth.ids)


def recall_ties(sims: np.ndarray, truth: Truth) -> float:
    """Recall counting any neighbour as good as exact search's k-th (ann-benchmarks' convention,
    with a tighter epsilon): which of the tied cells exact search lists is arbitrary."""
    return float(np.mean(sims >= truth.kth_sim[:, None] - TIE_EPS))


def recall_split(found: np.ndarray, truth: Truth) -> dict[str, float | None]:
    """Plain recall over the queries whose k-th place is no tie, and over those where it is."""
    tied = truth.tied
    return {
        "untied": recall(found[~tied], truth.ids[~tied]) if (~tied).any() else None,
        "tied": recall(found[tied], truth.ids[tied]) if tied.any() else None,
    }


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


def bench_usearch(vecs: np.ndarray, queries: np.ndarray, k: int) -> dict[str, Any]:
    from usearch.index import Index

    index = Index(ndim=vecs.shape[1], metric="ip", dtype="f16", connectivity=16,
                  expansion_add=128, expansion_search=64)  # fmt: skip
    t0 = time.perf_counter()
    index.add(np.arange(len(vecs), dtype=np.uint64), vecs)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = np.array([index.search(q, k).keys for q in queries])
    query_ms = (time.perf_counter() - t0) / len(queries) * 1000
    with tempfile.TemporaryDirectory() as tmp:
        index.save(f"{tmp}/i.usearch")
        size = Path(f"{tmp}/i.usearch").stat().st_size
    return {"build_s": build, "query_ms": query_ms, "bytes": size, "found": found}


def bench_faiss(
    box: list[np.ndarray], queries: np.ndarray, k: int, truth: Truth, sq8: bool, last: bool,
    hnsw_m: int, ef_construction: int, looks: Looks,
) -> dict:  # fmt: skip
    """FAISS HNSW over float32 vectors (``sq8`` False: the index `streamembed similar` builds)
    or over 8-bit scalar-quantised ones (a quarter of the memory; the store is int8 already).
    ``box`` holds the only reference to the vectors: when ``last``, they are freed once
    indexed."""
    import faiss

    vecs = box.pop() if last else box[0]

    t0 = time.perf_counter()
    index: Any  # the stubs type the two HNSW indexes apart
    if sq8:
        index = faiss.index_factory(vecs.shape[1], f"HNSW{hnsw_m},SQ8", faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(2).choice(len(vecs), min(len(vecs), 100_000), replace=False)
        index.train(vecs[np.sort(sample)])  # per-dimension ranges
    else:
        index = faiss.IndexHNSWFlat(vecs.shape[1], hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    for start in range(0, len(vecs), 100_000):  # as the index grows, acquisition by acquisition
        index.add(vecs[start : start + 100_000])
    build = time.perf_counter() - t0
    if not sq8:  # the index holds its own float32 copy; a million 2048-d vectors are 8 GiB
        del vecs  # (an SQ8 index is a quarter of that: the vectors stay to score its answers)
    with tempfile.TemporaryDirectory() as tmp:  # written, not serialised: no third copy
        faiss.write_index(index, f"{tmp}/i.faiss")
        size = Path(f"{tmp}/i.faiss").stat().st_size
    sweep = {}
    for ef in sorted({16, 32, EF_SEARCH, 128, 256}):
        index.hnsw.efSearch = ef
        t0 = time.perf_counter()
        hits = [index.search(q[None], k) for q in queries]
        query_ms = (time.perf_counter() - t0) / len(queries) * 1000
        found = np.array([h[1][0] for h in hits])
        # FAISS's own similarities are exact for float32 vectors, approximate for SQ8 codes
        sims = (
            np.einsum("qd,qkd->qk", queries, vecs[found])
            if sq8
            else np.array([h[0][0] for h in hits])
        )
        sweep[ef] = {"query_ms": query_ms, f"recall@{k}": recall(found, truth.ids),
                     f"recall@{k}_ties": recall_ties(sims, truth),
                     f"recall@{k}_by_tie": recall_split(found, truth)}  # fmt: skip
        # of the true neighbours missed, the share that are other looks of a cell found
        missed = [
            (set(t) - set(f), set(looks.cells[f])) for f, t in zip(found, truth.ids, strict=True)
        ]
        n_missed = sum(len(m) for m, _ in missed)
        sweep[ef]["missed_that_are_looks_of_found_cells"] = (
            sum(sum(looks.cells[i] in c for i in m) for m, c in missed) / n_missed
            if n_missed
            else None
        )
        if not sq8:
            t0 = time.perf_counter()
            wide = [expanded(index, looks, q, f, k) for q, f in zip(queries, found, strict=True)]
            sweep[ef][f"recall@{k}_looks_expanded"] = recall(np.array(wide), truth.ids)
            sweep[ef]["looks_expanded_extra_ms"] = (time.perf_counter() - t0) / len(queries) * 1000
        print(f"faiss efSearch {ef}: {sweep[ef]}", flush=True)
    return {"build_s": build, "bytes": size, "hnsw_m": hnsw_m, "vectors": "sq8" if sq8 else "f32",
            "ef_construction": ef_construction, "ef_search": EF_SEARCH,
            **sweep[EF_SEARCH], "by_ef_search": sweep}  # fmt: skip


def bench_ivf(
    box: list[np.ndarray], queries: np.ndarray, k: int, truth: Truth, first: int, nlist: int
) -> dict:
    """FAISS IVF over float32 vectors: ``nlist`` lists trained on the first ``first`` cells
    (what an index has when it starts), every vector added in 100,000 steps; recall by
    how many lists a query scans (nprobe). Takes the vectors over (frees them once indexed)."""
    import faiss

    vecs = box.pop()
    t0 = time.perf_counter()
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(vecs.shape[1]), vecs.shape[1], nlist,
                               faiss.METRIC_INNER_PRODUCT)  # fmt: skip
    index.train(vecs[:first])
    train = time.perf_counter() - t0
    for start in range(0, len(vecs), 100_000):
        index.add(vecs[start : start + 100_000])
    build = time.perf_counter() - t0
    del vecs
    sweep = {}
    from streamembed.outputs.similar import NPROBE

    for nprobe in sorted({8, NPROBE, 32, 64, 128}):
        index.nprobe = nprobe
        t0 = time.perf_counter()
        hits = [index.search(q[None], k) for q in queries]
        query_ms = (time.perf_counter() - t0) / len(queries) * 1000
        found = np.array([h[1][0] for h in hits])
        sims = np.array([h[0][0] for h in hits])
        sweep[nprobe] = {"query_ms": query_ms, f"recall@{k}": recall(found, truth.ids),
                         f"recall@{k}_ties": recall_ties(sims, truth)}  # fmt: skip
        print(f"faiss-ivf nprobe {nprobe}: {sweep[nprobe]}", flush=True)
    from streamembed.outputs.similar import NPROBE

    return {"train_s": train, "build_s": build, "nlist": nlist, "nprobe": NPROBE,
            **sweep.get(NPROBE, {}), "by_nprobe": sweep}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("store")
    p.add_argument("--tile")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--min-clear", type=float, default=0.9)
    p.add_argument("--libraries", default="faiss-ivf,faiss,usearch", help="comma-separated")
    p.add_argument("--no-noise-floor", action="store_true",
                   help="skip exact search over the cells rounded once more (the store's precision)")  # fmt: skip
    p.add_argument("--no-agreement", action="store_true",
                   help="skip FAISS's brute-force search against NumPy's")  # fmt: skip
    p.add_argument("--raw-cosine", action="store_true",
                   help="cosine of the embeddings as stored, not centred as `similar` does")  # fmt: skip
    p.add_argument("--hnsw-m", type=int, default=HNSW_M, help="FAISS graph degree")
    p.add_argument("--ef-construction", type=int, default=EF_CONSTRUCTION)
    p.add_argument("--nlist", type=int, help="faiss-ivf: lists (default: as the tool, from "
                   "the first acquisition's cells)")  # fmt: skip
    p.add_argument("--json")
    args = p.parse_args()
    vecs, first, cells = load(args.store, args.tile, args.min_clear)
    looks = Looks(cells)
    if not args.raw_cosine:
        from streamembed.outputs.similar import centred

        # the tool's centre: the mean of the first acquisition's clear cells (store_centre)
        centre = vecs[:first].mean(axis=0, dtype=np.float64).astype(np.float32)
        for start in range(0, len(vecs), BLOCK):  # in place: no second 8 GiB copy
            vecs[start : start + BLOCK] = centred(vecs[start : start + BLOCK], centre)
    rng = np.random.default_rng(0)
    queries = vecs[rng.choice(len(vecs), args.queries, replace=False)].copy()
    print(f"{len(vecs):,} cells of {vecs.shape[1]} dimensions ({vecs.nbytes / 2**30:.1f} GiB)",
          flush=True)  # fmt: skip
    truth = exact(vecs, queries, args.k)
    print(f"exact search: {truth.query_ms:.0f} ms a query; ties: {truth.summary()}", flush=True)
    records = {"cells": len(vecs), "dim": vecs.shape[1], "k": args.k, "queries": args.queries,
               "min_clear": args.min_clear, "centred": not args.raw_cosine,
               "exact_query_ms": truth.query_ms,
               "ties": truth.summary()}  # fmt: skip
    libraries = [lib for lib in args.libraries.split(",") if lib]
    if not args.no_agreement:
        agree = exact_agreement(vecs, queries, truth)
        records[f"exact_recall@{args.k}_faiss_brute_force_vs_numpy"] = agree
        print(f"FAISS brute force against NumPy's exact search: {agree:.3f}", flush=True)
    if not args.no_noise_floor:
        floor = store_noise_floor(vecs, queries, truth)
        records[f"exact_recall@{args.k}_after_one_more_int8_rounding"] = floor
        print(f"exact search against itself after one more int8 rounding: {floor:.3f}", flush=True)
    if "usearch" in libraries:
        r = bench_usearch(vecs, queries, args.k)
        found = r.pop("found")
        records["usearch"] = {**r, f"recall@{args.k}": recall(found, truth.ids),
                              f"recall@{args.k}_by_tie": recall_split(found, truth)}  # fmt: skip
        print("usearch", records["usearch"], flush=True)
    faiss_kinds = [lib for lib in libraries if lib in ("faiss", "faiss-sq8")]
    box = [vecs]
    del vecs  # the last FAISS index takes the vectors over: the array is freed once indexed
    for n, lib in enumerate(faiss_kinds):
        last = n == len(faiss_kinds) - 1 and "faiss-ivf" not in libraries
        records[lib] = bench_faiss(box, queries, args.k, truth, lib == "faiss-sq8", last,
                                   args.hnsw_m, args.ef_construction, looks)  # fmt: skip
        print(lib, records[lib], flush=True)
    if "faiss-ivf" in libraries:
        from streamembed.outputs.similar import TRAINING_VECTORS, lists

        # the tool trains on whole acquisitions until it holds TRAINING_VECTORS: about this
        n_train = max(first, min(len(box[0]), TRAINING_VECTORS))
        nlist = args.nlist or lists(n_train)
        records["faiss-ivf"] = bench_ivf(box, queries, args.k, truth, n_train, nlist)
    print(json.dumps(records, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
