"""Benchmark: the heat-kernel diffusion of GREmLN's attention, non-zero scatter-add against dense bmm.

    python bench/heat_kernel.py [--shard results/tokens/train.npz] [--threads 2] [--repeats 5]

``cellgraph.graphs.spectral.chebyshev_apply_dense`` multiplies only the non-zero entries of the cells'
Laplacians [B, n, n] (``Tensor.index_add``). The named baseline is the same Chebyshev recurrence with a
dense ``torch.bmm`` per term (what the function did before). Both are timed in this run on the same batch:

  apply   forward + backward of exp(-beta L) x, x [32, 256, 64] (the demo's queries)
  step    one masked training step of the demo GREmLN (d 64, 2 blocks, 4 heads, batch 32) per ``--diffuse``

The batch is the first 32 cells of ``--shard`` (a tokenize output; real cell subgraphs) when it exists, else
32 random graphs of the same size with 1% edge density. beta and the coefficients are those of
``--coefficients`` when it exists, else beta 11 (the demo's auto beta). Printed: median seconds over
``--repeats`` and the ratio dense / scatter; the maximum absolute difference of the two results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from cellgraph.graphs import spectral
from cellgraph.graphs.spectral import chebyshev_recurrence, heat_kernel_coefficients
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


def random_batch(rng, b=32, n=256, vocab=3002, n_bins=50):
    am = np.ones((b, 1 + n), dtype=bool)
    lap = np.zeros((b, n, n), dtype=np.float32)
    for i in range(b):
        a = np.triu((rng.random((n, n)) < 0.01).astype(np.float32), 1)
        a = a + a.T
        d = a.sum(1)
        inv = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1e-12)), 0)
        lap[i] = np.diag((d > 0).astype(np.float32)) - inv[:, None] * a * inv[None, :]
    genes = rng.integers(2, vocab, size=(b, 1 + n))
    genes[:, 0] = 1
    return {"gene_ids": torch.from_numpy(genes), "bins": torch.from_numpy(rng.integers(1, n_bins + 1, (b, 1 + n))),
            "attention_mask": torch.from_numpy(am), "laplacian": torch.from_numpy(lap)}, vocab, n_bins


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
    if Path(args.shard).exists():
        ds = TokenDataset(args.shard)
        batch = collate([ds[i] for i in range(32)])
        vocab, n_bins, source = int(ds.gene_ids.max()) + 1, int(ds.n_bins), args.shard
    else:
        batch, vocab, n_bins = random_batch(np.random.default_rng(0))
        source = "random graphs, 1% density"
    if Path(args.coefficients).exists():
        coef = json.loads(Path(args.coefficients).read_text())["coefficients"]
    else:
        coef = heat_kernel_coefficients(11.0).tolist()
    lap = batch["laplacian"].float()
    nnz = (lap != 0).sum().item() / lap.shape[0]
    print(f"batch: {source}; {tuple(lap.shape)}, {nnz:.0f} non-zeros per cell; K = {len(coef) - 1}; "
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
