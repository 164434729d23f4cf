"""Benchmark of the ARACNe engine (issue 3): wall time, MI pairs per second, precision / recall.

    python bench/aracne.py [--threads 2] [--bootstraps 100] [--seeds 0 1 2] [--cases planted real genome]

Cases (one row each; planted: one row per seed):
  planted  200 genes x 500 samples, 20 regulators, 100 bootstraps, data from a known regulator graph
           (linear, sigmoid, quadratic and exponential effects; seeded). Target <= 4 s wall including the
           null model; ARACNe3 on this machine: 44 s, precision 0.985 / recall 0.996 at 'count >= 10';
           ARACNe-AP ~300 s. Precision/recall are given for cellgraph's consolidation (Poisson right tail,
           Bonferroni, alpha 0.05) and for the ARACNe3 rule 'edge in >= 10 of 100 subnetworks'.
  real     one PBMC cell type (B, its train cells of results/expression/adata.h5ad, single cells) over
           2,000 HVGs (seurat flavour on the counts layer, CPM-log1p) and the regulators of
           results/networks/regulators.txt among them; 100 bootstraps. Target <= 300 s. No ground truth.
  genome   a fraction of the genome-scale case (20,000 genes x 1,000 samples x 2,000 regulators x 100
           bootstraps): 1 bootstrap with 100 and 200 regulators, each in a fresh process (peak RSS), then
           time and memory extrapolated linearly in the regulator count and bootstraps.

numba kernels are compiled (and cached on disk) by a small warm-up call first; the null model is computed,
not read from a cache, in every timed run. Timings on a shared 2-core machine are noisy; cpu_s (process CPU
time, all threads) is the load-independent figure (wall on 2 idle cores ~ cpu_s / 2).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cellgraph import aracne as A

REPO = Path(__file__).resolve().parents[1]
ARACNE3_S, ARACNE_AP_S = 44.0, 300.0
HEADER = "case\tseconds\tcpu_s\tnull_s\tMI_pairs\tpairs_per_s\tedges\tprecision\trecall\tprec_c10\trecall_c10\tvs_ARACNe3\tvs_ARACNe-AP"


def _pairs(df):
    return {frozenset((a, b)) for a, b in zip(df["regulator"], df["target"])}


def _pr(pred, true):
    tp = len(pred & true)
    return tp / max(len(pred), 1), tp / max(len(true), 1)


def _null_seconds(n, threads):
    import numba

    numba.set_num_threads(threads)
    t0 = time.perf_counter()
    A.null_mi(n, 100_000, seed=12345)
    return time.perf_counter() - t0


def case_planted(seed, boots, threads):
    expr, genes, regs, true = A.planted_network(n_genes=200, n_samples=500, n_regulators=20, seed=seed)
    t0, c0 = time.perf_counter(), time.process_time()
    df = A.aracne(expr, genes, regs, n_bootstraps=boots, threads=threads, seed=seed)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    p, r = _pr(_pairs(df), true)
    p10, r10 = _pr(_pairs(df[df["count"] >= 10]), true)
    pairs = 100_000 + boots * df.attrs["n_tested"]
    tnull = _null_seconds(df.attrs["n_per_bootstrap"], threads)
    print(f"planted(seed={seed})\t{dt:.2f}\t{dc:.2f}\t{tnull:.2f}\t{pairs}\t{pairs / dt:.3g}\t{len(_pairs(df))}\t{p:.3f}\t{r:.3f}"
          f"\t{p10:.3f}\t{r10:.3f}\t{ARACNE3_S / dt:.1f}x\t{ARACNE_AP_S / dt:.0f}x", flush=True)
    return dt


def _real_inputs(cell_type="B", n_hvg=2000, min_cells=10):
    """The cell type's train cells (CPM-log1p of the counts layer) over its 2,000 most variable genes
    (seurat dispersion flavour among genes expressed in >= ``min_cells`` of these cells) plus every
    regulator so expressed, as the grn stage selects genes (HVGs plus the regulators present)."""
    import anndata as ad
    import scanpy as sc

    a = ad.read_h5ad(REPO / "results" / "expression" / "adata.h5ad")
    cells = ((a.obs["trueLabel"].astype(str) == cell_type) & (a.obs["split"].astype(str) == "train")).to_numpy()
    b = ad.AnnData(a.layers["counts"][cells].copy(), var=a.var[[]].copy())
    sc.pp.filter_genes(b, min_cells=min_cells)
    sc.pp.normalize_total(b, target_sum=1e6)
    sc.pp.log1p(b)
    sc.pp.highly_variable_genes(b, n_top_genes=n_hvg, flavor="seurat")
    regs_all = set((REPO / "results" / "networks" / "regulators.txt").read_text().split())
    regs = sorted(regs_all & set(b.var_names))
    keep = b.var["highly_variable"].to_numpy() | b.var_names.isin(regs)
    x = b[:, keep].X
    expr = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64).T
    return expr, [str(g) for g in b.var_names[keep]], regs


def case_real(boots, threads, mi_pvalue):
    expr, genes, regs = _real_inputs()
    t0, c0 = time.perf_counter(), time.process_time()
    df = A.aracne(expr, genes, regs, n_bootstraps=boots, threads=threads, seed=0, mi_pvalue=mi_pvalue)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    pairs = 100_000 + boots * df.attrs["n_tested"]
    tnull = _null_seconds(df.attrs["n_per_bootstrap"], threads)
    print(f"real(B: {expr.shape[1]} cells, {len(genes)} genes = 2000 HVGs + regs, {len(regs)} regs, p={mi_pvalue:g})\t{dt:.2f}\t{dc:.2f}\t{tnull:.2f}"
          f"\t{pairs}\t{pairs / dt:.3g}\t{len(df)}\tn/a\tn/a\tn/a\tn/a\t-\t-", flush=True)
    return dt


def genome_worker(n_regs, n, threads):
    """One bootstrap of 20,000 genes x ``n`` samples with ``n_regs`` regulators; prints JSON."""
    rng = np.random.default_rng(0)
    g = 20_000
    expr = rng.standard_normal((g, n), dtype=np.float32).astype(np.float64)
    expr[1::2] += 0.5 * expr[0::2]  # some dependence
    genes = [f"G{i:05d}" for i in range(g)]
    A.aracne(expr[:40, :60], genes[:40], genes[:4], n_bootstraps=1, n_null=1000, threads=threads)  # compile
    t0, c0 = time.perf_counter(), time.process_time()
    df = A.aracne(expr, genes, genes[:n_regs], n_bootstraps=1, bootstrap="subsample", threads=threads, seed=0,
                  n_null=100_000)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(regs=n_regs, n=n, seconds=dt, cpu=dc, peak_rss=rss, pairs=df.attrs["n_tested"], edges=len(df))))


def _worker(r, n, threads):
    out = subprocess.run([sys.executable, __file__, "--genome-worker", str(r), str(n), "--threads", str(threads)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def case_genome(threads):
    """Time: 1 bootstrap at 1,000 samples with 100 and 200 regulators, extrapolated linearly to 2,000
    regulators and 100 bootstraps. Memory: the peak at the full 20,000 x 2,000 regulator-gene arrays
    measured with 100 samples, plus the growth of the peak from 100 to 1,000 samples at 200 regulators."""
    tnull = _null_seconds(632, threads)
    a, b = _worker(100, 1000, threads), _worker(200, 1000, threads)
    m_small, m_full = _worker(200, 100, threads), _worker(2000, 100, threads)
    t_per_reg = (b["seconds"] - a["seconds"]) / (b["regs"] - a["regs"])
    boot_full = b["seconds"] - tnull + t_per_reg * (2000 - b["regs"])  # one bootstrap at 2,000 regulators
    full_s = tnull + 100 * boot_full
    mem_full = m_full["peak_rss"] + (b["peak_rss"] - m_small["peak_rss"])
    for x in (a, b, m_small, m_full):
        print(f"genome-fraction(20000 genes x {x['n']} samples x {x['regs']} regs x 1 boot)\t{x['seconds']:.1f}\t{x['cpu']:.1f}\t-"
              f"\t{x['pairs']}\t{x['pairs'] / x['seconds']:.3g}\t{x['edges']}\tn/a\tn/a\tn/a\tn/a\t-\t-"
              f"\tpeak RSS {x['peak_rss'] / 2**30:.2f} GiB", flush=True)
    c_per_reg = (b["cpu"] - a["cpu"]) / (b["regs"] - a["regs"])
    cpu_full = 100 * (b["cpu"] + c_per_reg * (2000 - b["regs"]))
    print(f"genome projection (20000 genes x 1000 samples x 2000 regs x 100 boots): {full_s / 3600:.1f} h wall at "
          f"{threads} threads as measured ({boot_full:.0f} s per bootstrap); {cpu_full / 3600:.1f} CPU core-hours "
          f"(~{cpu_full / 3600 / threads:.1f} h on {threads} idle cores); peak memory {mem_full / 2**30:.2f} GiB",
          flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bootstraps", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cases", nargs="+", default=["planted", "real"], choices=["planted", "real", "genome"])
    p.add_argument("--real-mi-pvalue", type=float, default=1e-5)
    p.add_argument("--genome-worker", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.genome_worker:
        genome_worker(args.genome_worker[0], args.genome_worker[1], args.threads)
        return
    expr, genes, regs, _ = A.planted_network(n_genes=40, n_samples=60, n_regulators=4, seed=0)
    A.aracne(expr, genes, regs, n_bootstraps=2, threads=args.threads, n_null=1000)  # compile
    print(HEADER)
    if "planted" in args.cases:
        for seed in args.seeds:
            case_planted(seed, args.bootstraps, args.threads)
    if "real" in args.cases:
        case_real(args.bootstraps, args.threads, args.real_mi_pvalue)
    if "genome" in args.cases:
        case_genome(args.threads)


if __name__ == "__main__":
    main()
