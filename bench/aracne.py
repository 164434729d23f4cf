"""Benchmark of the ARACNe engine and the grn stage: speed, error control, precision / recall.

    python bench/aracne.py [--threads 2] [--cases planted planted-sc null real genome] [--seeds 0 1 2]

Cases:
  planted     200 genes x 500 samples, 20 regulators, 100 bootstraps, Gaussian data from a known regulator graph
              (linear, sigmoid, quadratic, exponential effects), engine defaults. Target <= 4 s wall on 2 cores
              including the null model; ARACNe3 on this machine: 44 s, ARACNe-AP ~300 s.
  planted-sc  the same kind of graph observed as single-cell UMI counts (cellgraph.grn.aracne.planted_counts): 350 cells,
              library sizes resampled from the PBMC cells, 60-75% zeros per gene, latent log-sd 0.45 (the median
              within-type value of PBMC genes with 60-75% zeros, method of moments) and 1.0, latent noise 0.5 and 1.0,
              monotone effects; through the grn stage's path (grn.type_network: log-CPM, depth blocks, defaults),
              and without depth blocks, each without and with the count DPI (cellgraph.grn.count_dpi, the
              stage default). Precision (pooled, 95% bootstrap interval over seeds) / recall against the planted
              pairs over --sc-seeds seeds (default 40). Target: precision >= 0.95 at the defaults.
  null        every seen PBMC type of results/expression/adata.h5ad (its train cells, the grn stage's genes), with
              its genes permuted independently across the type's cells ("plain") and within blocks of 5 cells of
              similar depth ("depth"), at the stage defaults: final edges per seed over --null-seeds seeds. Target:
              0 edges in >= 19 of 20 seeds.
  real        PBMC type B (train cells) over its 2,000 most variable genes plus the regulators detected in >= 10%
              of its cells, 100 bootstraps, single cells and disjoint 10k-UMI metacells, with and without depth
              blocks: wall time (target <= 300 s) and edges, with the permutation control's false edges (3 runs).
  genome      a fraction of the genome-scale case (20,000 genes x 1,000 samples x 2,000 regulators x 100
              bootstraps), extrapolated linearly (peak RSS measured in fresh processes).

Timings on a shared 2-core machine are noisy; cpu_s (process CPU time, all threads) is the load-independent figure.
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

from cellgraph.grn import aracne as A
from cellgraph.grn import celltypes as grn
from cellgraph.grn.count_dpi import count_dpi

REPO = Path(__file__).resolve().parents[1]
ARACNE3_S, ARACNE_AP_S = 44.0, 300.0
PBMC = REPO / "resources" / "demo" / "expression" / "pbmc3p5k_sorted_counts.h5ad"


def _pairs(df):
    return {frozenset((a, b)) for a, b in zip(df["regulator"], df["target"])}


def _pr(pred, true):
    tp = len(pred & true)
    return tp / max(len(pred), 1), tp / max(len(true), 1)


def _settings(threads, **over):
    return dict(grn.DEFAULTS, seed=0, null_seed=0, cache_dir=REPO / "results" / ".cache" / "aracne_null",
                checkpoint_dir=None, threads=threads, control_permutations=0) | over


def case_planted(seed, threads):
    expr, genes, regs, true = A.planted_network(n_genes=200, n_samples=500, n_regulators=20, seed=seed)
    t0, c0 = time.perf_counter(), time.process_time()
    df = A.aracne(expr, genes, regs, n_bootstraps=100, threads=threads, seed=seed)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    p, r = _pr(_pairs(df), true)
    print(f"planted(seed={seed})\twall {dt:.2f} s\tcpu {dc:.2f} s\tedges {len(_pairs(df))}\tprecision {p:.3f}\t"
          f"recall {r:.3f}\tvs ARACNe3 {ARACNE3_S / dt:.1f}x\tvs ARACNe-AP {ARACNE_AP_S / dt:.0f}x\t"
          f"target <= 4 s: {'met' if dt <= 4 else 'MISSED'}", flush=True)


def _precision_ci(tp, found, n_boot=2000):
    """Pooled precision with a 95% bootstrap interval over seeds (tp, found: per-seed counts)."""
    tp, found = np.asarray(tp), np.asarray(found)
    if not found.sum():
        return "n/a (no edge)"
    idx = np.random.default_rng(0).integers(0, tp.size, size=(n_boot, tp.size))
    boot = tp[idx].sum(1) / np.maximum(found[idx].sum(1), 1)
    return f"{tp.sum() / found.sum():.3f} ({np.quantile(boot, 0.025):.3f}-{np.quantile(boot, 0.975):.3f})"


def case_planted_sc(seeds, threads, edges_out=None):
    import anndata as ad
    import pandas as pd

    lib = np.asarray(ad.read_h5ad(PBMC).X.sum(axis=1)).ravel()
    print("planted-sc\tlog_sd\tnoise\tdepth blocks\tcount DPI\tedges/seed\tprecision (pooled, 95% CI over seeds)\t"
          "recall\tcount DPI s/seed", flush=True)
    for log_sd in (0.45, 1.0):
        for noise in (0.5, 1.0):
            for blocks in (grn.DEFAULTS["depth_stratum_cells"], 0):
                tp, found, n_true, spent = np.zeros((2, len(seeds)), int), np.zeros((2, len(seeds)), int), 0, 0.0
                rows = []
                for k, seed in enumerate(seeds):
                    counts, _, libs, genes, regs, true = A.planted_counts(seed=seed, library_sizes=lib, log_sd=log_sd,
                                                                          noise=noise)
                    st = _settings(threads, seed=seed, depth_stratum_cells=blocks, count_dpi=False)
                    df, _, _ = grn.type_network(counts.T, libs, np.asarray(genes), regs, st)
                    t0 = time.perf_counter()
                    keep = count_dpi(df, counts.T, libs / np.median(libs), genes, regs, grn.DEFAULTS["count_dpi_margin"])
                    spent += time.perf_counter() - t0
                    rows.append(df[["regulator", "target"]].assign(seed=seed, log_sd=log_sd, noise=noise,
                                                                   depth_blocks=blocks, count_dpi_kept=keep))
                    for row, sel in enumerate((np.ones(len(df), bool), keep)):  # the stage without / with count DPI
                        pred = _pairs(df[sel])
                        tp[row, k], found[row, k] = len(pred & true), len(pred)
                    n_true += len(true)
                for row, label in enumerate(("off", "on")):
                    print(f"planted-sc\t{log_sd}\t{noise}\t{blocks or 'off'}\t{label}\t{found[row].sum() / len(seeds):.1f}\t"
                          f"{_precision_ci(tp[row], found[row])}\t{tp[row].sum() / n_true:.4f}\t{spent / len(seeds):.2f}",
                          flush=True)
                if edges_out is not None:
                    table = pd.concat(rows, ignore_index=True)
                    table.to_csv(edges_out, sep="\t", index=False, mode="a", header=not Path(edges_out).exists())


def _pbmc_types():
    """(type, counts [cells x genes] of the grn stage's genes, depth, genes, regulators) per seen PBMC type."""
    import anndata as ad

    a = ad.read_h5ad(REPO / "results" / "expression" / "adata.h5ad")
    regs_all = set((REPO / "results" / "networks" / "regulators.txt").read_text().split())
    label = a.uns["cellgraph"]["label_key"]
    lab, split = a.obs[label].astype(str).to_numpy(), a.obs["split"].astype(str).to_numpy()
    names = np.asarray(a.var_names)
    gene_pos = np.flatnonzero(a.var["highly_variable"].to_numpy() | np.isin(names, list(regs_all)))
    heldout = set(lab[split == "heldout"])
    for ct in sorted(set(lab[split == "train"]) - heldout):
        cells = np.flatnonzero((lab == ct) & (split == "train"))
        counts, depth, genes, regs, _ = grn.type_inputs(a, cells, gene_pos, np.isin(names[gene_pos], list(regs_all)),
                                                        grn.DEFAULTS["min_detected_fraction"])
        yield ct, counts, depth, genes, regs


def case_null(seeds, threads):
    print("null\tcell type\tpermutation\tfinal edges per seed\tseeds with 0 edges", flush=True)
    total = {"plain": [0, 0], "depth": [0, 0]}
    for ct, counts, depth, genes, regs in _pbmc_types():
        for kind in ("plain", "depth"):
            edges = []
            for seed in seeds:
                rng = np.random.default_rng([seed, 1])
                null = (rng.permuted(counts, axis=0) if kind == "plain"
                        else grn.permute_within_blocks(counts, grn.depth_blocks(depth, 5), rng))
                df, _, _ = grn.type_network(null, depth, genes, regs, _settings(threads, seed=seed))
                edges.append(grn.n_pairs(df))
            zero = sum(e == 0 for e in edges)
            total[kind][0] += zero
            total[kind][1] += len(edges)
            print(f"null\t{ct}\t{kind}\t{edges}\t{zero}/{len(edges)}", flush=True)
    for kind, (z, n) in total.items():
        print(f"null\tall types\t{kind}\t-\t{z}/{n} type-seeds with 0 edges", flush=True)


def _real_inputs(cell_type="B", n_hvg=2000):
    """The type's train cells: raw counts of its 2,000 most variable genes (seurat flavour on log-CPM, among
    genes detected in >= 10% of its cells) plus every regulator so detected; depth; names; regulators."""
    import anndata as ad
    import scanpy as sc

    a = ad.read_h5ad(REPO / "results" / "expression" / "adata.h5ad")
    cells = ((a.obs["trueLabel"].astype(str) == cell_type) & (a.obs["split"].astype(str) == "train")).to_numpy()
    b = ad.AnnData(a.layers["counts"][cells].copy(), var=a.var[[]].copy())
    depth = np.asarray(b.X.sum(axis=1)).ravel().astype(float)
    b = b[:, grn.detected_genes(np.asarray(b.X.toarray() if hasattr(b.X, "toarray") else b.X), 0.1)].copy()
    c = b.X.copy()
    sc.pp.normalize_total(b, target_sum=1e6)
    sc.pp.log1p(b)
    sc.pp.highly_variable_genes(b, n_top_genes=min(n_hvg, b.n_vars - 1), flavor="seurat")
    regs_all = set((REPO / "results" / "networks" / "regulators.txt").read_text().split())
    regs = sorted(regs_all & set(b.var_names))
    keep = b.var["highly_variable"].to_numpy() | b.var_names.isin(regs)
    counts = c[:, keep]
    counts = np.asarray(counts.toarray() if hasattr(counts, "toarray") else counts, dtype=float)
    return counts, depth, np.asarray(b.var_names[keep]), regs


def case_real(threads):
    counts, depth, genes, regs = _real_inputs()
    print(f"real\tB: {counts.shape[0]} cells, {len(genes)} genes, {len(regs)} regulators, 100 bootstraps", flush=True)
    print("real\tsamples\tdepth blocks\tsamples n\twall s\tcpu s\tedges (pairs; before count DPI)\tcontrol edges (3 runs)\t"
          "target <= 300 s",
          flush=True)
    for metacells in ("none", "disjoint"):
        for blocks in (grn.DEFAULTS["depth_stratum_cells"], 0):
            st = _settings(threads, n_bootstraps=100, metacells=metacells, depth_stratum_cells=blocks,
                           control_permutations=3)
            t0, c0 = time.perf_counter(), time.process_time()
            df, cut, info = grn.type_network(counts, depth, genes, regs, st)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            control = grn.permutation_control(counts, depth, genes, regs, st, cut)
            print(f"real\t{metacells}\t{blocks or 'off'}\t{info['samples']}\t{dt:.1f}\t{dc:.1f}\t{grn.n_pairs(df)} "
                  f"({info['edges_before_count_dpi']})\t{control}\t"
                  f"{'met' if dt <= 300 else 'MISSED'}", flush=True)


def genome_worker(n_regs, n, threads):
    """One bootstrap of 20,000 genes x ``n`` samples with ``n_regs`` regulators; prints JSON."""
    rng = np.random.default_rng(0)
    g = 20_000
    expr = rng.standard_normal((g, n), dtype=np.float32).astype(np.float64)
    expr[1::2] += 0.5 * expr[0::2]  # some dependence
    genes = [f"G{i:05d}" for i in range(g)]
    A.aracne(expr[:40, :60], genes[:40], genes[:4], n_bootstraps=1, n_null=1000, threads=threads)  # compile
    t0, c0 = time.perf_counter(), time.process_time()
    df = A.aracne(expr, genes, genes[:n_regs], n_bootstraps=1, threads=threads, seed=0, n_null=100_000)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(regs=n_regs, n=n, seconds=dt, cpu=dc, peak_rss=rss, pairs=df.attrs["n_tested"], edges=len(df))))


def _worker(r, n, threads):
    out = subprocess.run([sys.executable, __file__, "--genome-worker", str(r), str(n), "--threads", str(threads)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def case_genome(threads):
    """1 bootstrap at 1,000 samples with 100 and 200 regulators, extrapolated linearly to 2,000 regulators and
    100 bootstraps; memory from the full 20,000 x 2,000 regulator-gene arrays at 100 samples."""
    a, b = _worker(100, 1000, threads), _worker(200, 1000, threads)
    m_small, m_full = _worker(200, 100, threads), _worker(2000, 100, threads)
    t_per_reg = (b["seconds"] - a["seconds"]) / (b["regs"] - a["regs"])
    boot_full = b["seconds"] + t_per_reg * (2000 - b["regs"])
    mem_full = m_full["peak_rss"] + (b["peak_rss"] - m_small["peak_rss"])
    for x in (a, b, m_small, m_full):
        print(f"genome-fraction(20000 genes x {x['n']} samples x {x['regs']} regs x 1 boot)\twall {x['seconds']:.1f} s\t"
              f"cpu {x['cpu']:.1f} s\tpairs {x['pairs']}\tpeak RSS {x['peak_rss'] / 2**30:.2f} GiB", flush=True)
    print(f"genome projection (20000 genes x 1000 samples x 2000 regs x 100 boots): {100 * boot_full / 3600:.1f} h wall "
          f"at {threads} threads; peak memory {mem_full / 2**30:.2f} GiB", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="planted case seeds")
    p.add_argument("--sc-seeds", type=int, default=40, help="planted-sc seeds")
    p.add_argument("--sc-edges-out", default=None,
                   help="planted-sc: write every edge of the stage (columns regulator, target, seed, log_sd, noise, "
                        "depth_blocks, count_dpi_kept) to this TSV (replaced if present)")
    p.add_argument("--null-seeds", type=int, default=20, help="null case seeds")
    p.add_argument("--cases", nargs="+", default=["planted", "planted-sc", "null", "real"],
                   choices=["planted", "planted-sc", "null", "real", "genome"])
    p.add_argument("--genome-worker", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.genome_worker:
        genome_worker(args.genome_worker[0], args.genome_worker[1], args.threads)
        return
    expr, genes, regs, _ = A.planted_network(n_genes=40, n_samples=60, n_regulators=4, seed=0)
    A.aracne(expr, genes, regs, n_bootstraps=2, threads=args.threads, n_null=1000)  # compile the kernels
    if "planted" in args.cases:
        for seed in args.seeds:
            case_planted(seed, args.threads)
    if "planted-sc" in args.cases:
        if args.sc_edges_out:
            Path(args.sc_edges_out).unlink(missing_ok=True)
        case_planted_sc(range(args.sc_seeds), args.threads, args.sc_edges_out)
    if "null" in args.cases:
        case_null(range(args.null_seeds), args.threads)
    if "real" in args.cases:
        case_real(args.threads)
    if "genome" in args.cases:
        case_genome(args.threads)


if __name__ == "__main__":
    main()
