"""Benchmark: parse a file of the format and size of human STRING v12 ``protein.links.detailed``.

Generates (once) ``9606.protein.links.detailed.bench.txt.gz``: 13.7 million space-separated rows
``protein1 protein2 neighborhood fusion cooccurence coexpression experimental database textmining
combined_score``, every pair listed in both orders and sorted by ``protein1`` as STRING does, over the real
STRING v12 human protein ids of ``resources/demo/networks/human/9606.protein.info.v12.0.txt.gz`` (so the
id mapping is realistic); the scores are random (seeded), not STRING's.

Then, each in a fresh process (peak RSS = that process's ``ru_maxrss``):

1. ``parse``: :func:`cellgraph.graphs.networks.read_string_links` (pyarrow.csv, columnar, no Python row loop);
2. ``build``: :func:`cellgraph.graphs.multigraph.build_multigraph` for human from that file alone: ENSP ->
   HGNC symbols, thresholds, the six STRING channel graphs.

Target: ``parse`` <= 60 s and <= 4 GB on 2 cores. Not part of the test suite.

    python bench/networks.py [--rows 13700000] [--dir /tmp/cellgraph_bench] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
INFO = REPO / "resources" / "demo" / "networks" / "human" / "9606.protein.info.v12.0.txt.gz"
IDMAP = REPO / "resources" / "demo" / "networks" / "idmap"
COLUMNS = ["neighborhood", "fusion", "cooccurence", "coexpression", "experimental", "database", "textmining"]
# fraction of STRING rows with a non-zero score per channel (rough, for realistic sparsity)
NONZERO = [0.03, 0.005, 0.03, 0.5, 0.3, 0.05, 0.6]


def generate(path: Path, rows: int, seed: int) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    ids = pd.read_csv(INFO, sep="\t", usecols=[0]).iloc[:, 0].to_numpy(dtype=str)
    n = len(ids)
    half = rows // 2
    # distinct unordered pairs u < v
    keys = np.empty(0, dtype=np.int64)
    while keys.size < half:
        u = rng.integers(0, n, size=int(half * 1.1))
        v = rng.integers(0, n, size=int(half * 1.1))
        ok = u != v
        k = np.minimum(u, v)[ok].astype(np.int64) * n + np.maximum(u, v)[ok]
        keys = np.unique(np.concatenate([keys, k]))
    keys = rng.permutation(keys)[:half]
    u, v = keys // n, keys % n
    scores = np.zeros((half, len(COLUMNS)), dtype=np.int16)
    for j, p in enumerate(NONZERO):
        nz = rng.random(half) < p
        scores[nz, j] = rng.integers(45, 1000, size=int(nz.sum()))
    combined = np.maximum(scores.max(axis=1), rng.integers(150, 400, size=half)).astype(np.int16)
    a = np.concatenate([u, v])
    b = np.concatenate([v, u])
    sc = np.vstack([scores, scores])
    comb = np.concatenate([combined, combined])
    order = np.lexsort((b, a))
    cols = {"protein1": pa.DictionaryArray.from_arrays(pa.array(a[order].astype(np.int32)), pa.array(ids)).cast(pa.string()),
            "protein2": pa.DictionaryArray.from_arrays(pa.array(b[order].astype(np.int32)), pa.array(ids)).cast(pa.string())}
    for j, c in enumerate(COLUMNS):
        cols[c] = pa.array(sc[order, j])
    cols["combined_score"] = pa.array(comb[order])
    table = pa.table(cols)
    tmp = path.with_suffix(".part")
    with pa.CompressedOutputStream(str(tmp), "gzip") as out:
        out.write((" ".join(table.column_names) + "\n").encode())
        pacsv.write_csv(table, out, pacsv.WriteOptions(delimiter=" ", quoting_style="none", include_header=False,
                                                       batch_size=1 << 20))
    tmp.rename(path)


def _measure(phase: str, path: str) -> None:
    import resource

    sys.path.insert(0, str(REPO / "src"))
    t0 = time.perf_counter()
    if phase == "parse":
        from cellgraph.graphs.networks import read_string_links

        links = read_string_links(path)
        info = {"rows": int(len(links.a)), "proteins": int(len(links.ids))}
    else:
        from cellgraph.graphs.multigraph import build_multigraph

        graphs, rejects, report = build_multigraph("human", {
            "string_links": path, "string_info": str(INFO), "alias_map": str(IDMAP / "hs_alias_symbol.tsv"),
            "ensg_map": str(IDMAP / "hs_ensg_entrez_symbol.tsv"), "ensp_map": str(IDMAP / "hs_ensp_entrez_symbol.tsv")})
        info = {"nodes": int(len(graphs["nodes"])), "rejects": int(len(rejects)),
                "edges": {g: int(graphs[g][0].shape[1]) for g in report["graphs"] if graphs[g][0].shape[1]}}
    seconds = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"phase": phase, "seconds": round(seconds, 1), "peak_rss_gb": round(peak_gb, 2), **info}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=13_700_000)
    p.add_argument("--dir", default="/tmp/cellgraph_bench")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phases", nargs="+", default=["parse", "build"], choices=["parse", "build"])
    p.add_argument("--measure", nargs=2, metavar=("PHASE", "FILE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        _measure(*args.measure)
        return 0
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"9606.protein.links.detailed.bench{args.rows}.s{args.seed}.txt.gz"
    if not path.exists():
        t0 = time.perf_counter()
        generate(path, args.rows, args.seed)
        print(f"generated {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s")
    ok = True
    for phase in args.phases:
        out = subprocess.run([sys.executable, __file__, "--measure", phase, str(path)], capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(rec))
        if phase == "parse":
            ok = rec["seconds"] <= 60 and rec["peak_rss_gb"] <= 4
            print(f"parse target (<= 60 s, <= 4 GB): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
