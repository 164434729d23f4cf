"""Benchmark: streaming tokenization of the pretraining corpus against the whole-corpus path.

    python bench/tokenize_memory.py [--scales 1 4 16] [--chunk-cells 2000] [--skip-baseline-above 16]

The vendored real corpus (resources/demo/expression/zheng2017_frozen_donorA_counts.h5ad, 2,896 cells of
raw UMI counts) is replicated 1x, 4x, 16x into corpus h5ad files in a temporary folder (obs names get a
``-r<i>`` suffix, so they stay unique). For each size, in a fresh process:

  streamed   ``scan_corpus`` (backed, QC chunk by chunk) + ``tokenize_corpus_streamed`` (--chunk-cells at a
             time, spooled to disk, zip assembled by streaming): what ``cellgraph tokenize`` now runs
  baseline   "whole-corpus tokenization, before": ``read_corpus`` (whole corpus in memory) +
             ``tokenize_corpus`` + ``write_shard``

Both take the stage's options as ``cellgraph.pp.tokenize.TokenizeParams`` (the command line's defaults, with
``chunk_cells`` from --chunk-cells).

Both tokenize with the same vocabulary (the 2,000 genes detected in most cells of the 1x corpus) and
the shared DoRothEA A-C prior graph over it, max_seq_len 128, 100 bins, QC as the stage's defaults. The
vocabulary step (seurat_v3 HVGs) is not timed here. Printed: cells/s (tokenized cells / wall seconds of
the step), peak RSS of the process (``ru_maxrss``) and its growth over the RSS after imports, and the ratios
against 1x: the streamed RSS should stay flat once the corpus exceeds one chunk, time grow linearly. The
two shard files are compared byte for byte at every size. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import sys
from pathlib import Path

# this file's name shadows the standard library's tokenize (imported by pandas, inspect, ...) when it is
# run as a script: drop its folder from the import path before anything imports tokenize
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "resources/demo/expression/zheng2017_frozen_donorA_counts.h5ad"
DOROTHEA = REPO / "resources/demo/networks/human/dorothea_hs_regulons.tsv.gz"

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np, pandas as pd
from cellgraph.pp import tokenize as tk

mode, corpus, genes_file, out, chunk = sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
params = tk.TokenizeParams(chunk_cells=chunk)  # the command line's defaults
genes = Path(genes_file).read_text().split()
d = pd.read_csv(sys.argv[6], sep="\t")
d = d[d["confidence"].isin(["A", "B", "C"])]
edges = pd.DataFrame({"source": d["tf"].to_numpy(), "target": d["target"].to_numpy(), "graph": "dorothea"})
prior, _ = tk.prior_graph(edges, ["dorothea"], {g: i for i, g in enumerate(genes)})
t0 = time.perf_counter()
if mode == "streamed":
    scan = tk.scan_corpus(corpus, params)
    rep = tk.tokenize_corpus_streamed(scan, genes, prior, out, params)
    scan.close()
else:
    c, _ = tk.read_corpus(corpus, params)
    arrays, rep = tk.tokenize_corpus(c, genes, prior, params)
    tk.write_shard(out, arrays)
wall = time.perf_counter() - t0
print(json.dumps({"cells": rep["cells"], "wall_s": wall, "rss0_kb": rss0,
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def make_corpora(root: Path, scales: list[int]) -> tuple[dict[int, Path], Path]:
    """Replicated corpus files per scale and the vocabulary file (2,000 most detected genes of the 1x corpus)."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    base = ad.read_h5ad(CORPUS)
    base.X = sp.csr_matrix(base.X)
    detected = np.asarray((base.X > 0).sum(0)).ravel()
    genes = sorted(base.var_names[np.argsort(-detected, kind="stable")[:2000]])
    (root / "genes.txt").write_text("\n".join(genes) + "\n")
    paths = {}
    for k in scales:
        parts = []
        for i in range(k):
            p = base.copy()
            p.obs_names = [f"{n}-r{i}" for n in base.obs_names]
            parts.append(p)
        a = ad.concat(parts, merge="same") if k > 1 else base
        paths[k] = root / f"corpus_{k}x.h5ad"
        a.write_h5ad(paths[k])
    return paths, root / "genes.txt"


def run_child(mode: str, corpus: Path, genes: Path, out: Path, chunk: int) -> dict:
    cmd = [sys.executable, "-c", CHILD, mode, str(corpus), str(genes), str(out), str(chunk), str(DOROTHEA)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if res.returncode:
        raise RuntimeError(f"{mode} {corpus.name} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--chunk-cells", type=int, default=2000)
    ap.add_argument("--skip-baseline-above", type=int, default=16, help="no baseline run above this scale")
    ap.add_argument("--make-corpora", default=None, help=argparse.SUPPRESS)  # internal: the corpus builder
    opts = ap.parse_args()
    if opts.make_corpora:
        make_corpora(Path(opts.make_corpora), opts.scales)
        return
    with tempfile.TemporaryDirectory(prefix="bench_tokenize_") as tmp:
        root = Path(tmp)
        # built in a child: a forked child starts with its parent's RSS as its ru_maxrss, so this process
        # must never hold a corpus
        subprocess.run([sys.executable, __file__, "--make-corpora", str(root), "--scales", *map(str, opts.scales)],
                       check=True)
        corpora, genes = {k: root / f"corpus_{k}x.h5ad" for k in opts.scales}, root / "genes.txt"
        rows = []
        for k in opts.scales:
            for mode in ("baseline", "streamed"):
                if mode == "baseline" and k > opts.skip_baseline_above:
                    continue
                r = run_child(mode, corpora[k], genes, root / f"{mode}_{k}x" / "pretrain.npz", opts.chunk_cells)
                rows.append({"scale": k, "mode": mode, **r})
            if k <= opts.skip_baseline_above:
                same = ((root / f"baseline_{k}x/pretrain.npz").read_bytes()
                        == (root / f"streamed_{k}x/pretrain.npz").read_bytes())
                rows[-1]["identical"] = same
        report(rows, opts.chunk_cells)


def report(rows: list[dict], chunk: int) -> None:
    names = {"baseline": "whole-corpus tokenization, before", "streamed": f"streamed, --chunk-cells {chunk}"}
    first = {r["mode"]: r for r in rows if r["scale"] == min(x["scale"] for x in rows)}
    print(f"{'path':<36} {'scale':>5} {'cells':>7} {'wall s':>8} {'cells/s':>8} {'peak RSS MB':>11} "
          f"{'RSS over imports MB':>19} {'time x':>7} {'RSS x':>6} {'bytes = baseline':>16}")
    for r in rows:
        f = first[r["mode"]]
        grow = r["rss_kb"] - r["rss0_kb"]
        ident = "" if "identical" not in r else ("yes" if r["identical"] else "NO")
        print(f"{names[r['mode']]:<36} {r['scale']:>4}x {r['cells']:>7} {r['wall_s']:>8.1f} "
              f"{r['cells'] / r['wall_s']:>8.0f} {r['rss_kb'] / 1024:>11.0f} {grow / 1024:>19.0f} "
              f"{r['wall_s'] / f['wall_s']:>7.2f} {r['rss_kb'] / f['rss_kb']:>6.2f} {ident:>16}")
    print("ratios against the same path at the smallest scale; RSS from ru_maxrss of each fresh process")


if __name__ == "__main__":
    main()
