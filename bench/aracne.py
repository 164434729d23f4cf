"""Benchmark of the ARACNe engine on a planted network (issue 3 target: <= 4 s wall for 200 genes x
500 samples x 20 regulators x 100 bootstraps, null model included; precision/recall vs ARACNe3's
0.985 / 0.996).

    python bench/aracne.py [--threads 2] [--bootstraps 100] [--seeds 0 1 2]

numba kernels are compiled (and cached on disk) by a small warm-up call first, so the timing covers the
null model (computed, not cached), ranks, MI, DPI and consolidation.
"""

from __future__ import annotations

import argparse
import time

from cellgraph import aracne as A


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bootstraps", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    expr, genes, regs, _ = A.planted_network(n_genes=40, n_samples=60, n_regulators=4, seed=0)
    A.aracne(expr, genes, regs, n_bootstraps=2, threads=args.threads, n_null=1000)  # compile
    print("seed\tseconds\tedges\tprecision\trecall")
    for seed in args.seeds:
        expr, genes, regs, true = A.planted_network(n_genes=200, n_samples=500, n_regulators=20, seed=seed)
        t0 = time.perf_counter()
        df = A.aracne(expr, genes, regs, n_bootstraps=args.bootstraps, threads=args.threads, seed=seed)
        dt = time.perf_counter() - t0
        pred = {frozenset((a, b)) for a, b in zip(df["regulator"], df["target"])}
        tp = len(pred & true)
        print(f"{seed}\t{dt:.2f}\t{len(pred)}\t{tp / max(len(pred), 1):.3f}\t{tp / len(true):.3f}")


if __name__ == "__main__":
    main()
