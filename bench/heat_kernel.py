"""Benchmark: the heat-kernel diffusion of GREmLN's attention, non-zero scatter-add against dense bmm.

    python bench/heat_kernel.py [--shard results/tokens/train.npz] [--threads 2] [--repeats 5]

``cellgraph.graphs.spectral.chebyshev_apply_dense`` multiplies only the non-zero entries of the cells'
Laplacians [B, n, n] (``Tensor.index_add``). The named baseline is the same Chebyshev recurrence with a
dense ``torch.bmm`` per term (what the function did before). Both are timed in this run on the same batch:

  apply   forward + backward of exp(-beta L) x, x [32, 256, 64] (the demo's queries)
  step    one masked training step of the demo GREmLN (d 64, 2 blocks, 4 heads, batch 32) per ``--diffuse``

The batch is the first 32 cells of ``--shard`` (a tokenize output: real cell subgraphs) and the kernel that of
``--coefficients`` (the spectral stage's; run the main job first). Printed: median seconds over
``--repeats`` and the ratio dense / scatter; the maximum absolute difference of the two results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from cellgraph.graphs import spectral
from cellgraph.graphs.spectral import chebyshev_recurrence
from cellgraph.io.shards import TokenDataset, collate
from cellgraph.models import gremln
from cellgraph.models.gremln import GREmLN, GREmLNConfig
from cellgraph.runtime import limit_thread_pools
from cellgraph.training.pretrain import mask_positions, masked_step


def dense_bmm_apply(laplacian, x, coefficients):
    """The baseline: the Chebyshev recurrence with a dense ``torch.bmm`` per term."""
    c = torch.as_tensor(coefficients, dtype=x.dtype, device=x.device)
    lap = laplacian.to(x.dtype)
    return chebyshev_recurrence(lambda y: torch.bmm(lap, y), x, c)


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shard", default="results/tokens/train.npz")
    ap.add_argument("--coefficients", default="results/spectral/coefficients.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    limit_thread_pools(args.threads)
    torch.manual_seed(0)
    for path in (args.shard, args.coefficients):
        if not Path(path).exists():
            raise SystemExit(f"{path}: not found; run the main job (snakemake) first, or pass --shard / --coefficients")
    ds = TokenDataset(args.shard)
    batch = collate([ds[i] for i in range(32)])
    vocab, n_bins = int(ds.gene_ids.max()) + 1, int(ds.n_bins)
    coef = json.loads(Path(args.coefficients).read_text())["coefficients"]
    lap = batch["laplacian"].float()
    nnz = (lap != 0).sum().item() / lap.shape[0]
    print(f"batch: {args.shard}; {tuple(lap.shape)}, {nnz:.0f} non-zeros per cell; K = {len(coef) - 1}; "
          f"{args.threads} threads")
    x = torch.randn(lap.shape[0], lap.shape[1], 64, requires_grad=True)
    c = torch.tensor(coef)
    diff = (spectral.chebyshev_apply_dense(lap, x, c) - dense_bmm_apply(lap, x, c)).abs().max().item()
    print(f"max |scatter - dense| = {diff:.2e}")
    print("case\tdense bmm (s)\tnon-zero scatter (s)\tratio dense / scatter")
    t = [timed(lambda f=f: f(lap, x, c).sum().backward(), args.repeats)
         for f in (dense_bmm_apply, spectral.chebyshev_apply_dense)]
    print(f"apply\t{t[0]:.4f}\t{t[1]:.4f}\t{t[0] / t[1]:.2f}x", flush=True)
    for diffuse in ("queries", "queries+values"):
        cfg = GREmLNConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=vocab, n_bins=n_bins, coefficients=coef,
                           chebyshev_order=len(coef) - 1, diffuse=diffuse)
        model = GREmLN(cfg)
        mask = mask_positions(batch["attention_mask"], torch.arange(32), 0.3, seed=0, epoch=0)
        t = []
        for apply in (dense_bmm_apply, spectral.chebyshev_apply_dense):
            gremln.chebyshev_apply_dense = apply
            t.append(timed(lambda: masked_step(model, batch, mask)[0].backward(), args.repeats))
        gremln.chebyshev_apply_dense = spectral.chebyshev_apply_dense
        print(f"step ({diffuse})\t{t[0]:.4f}\t{t[1]:.4f}\t{t[0] / t[1]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
