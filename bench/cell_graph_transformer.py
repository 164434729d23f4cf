"""Benchmark of one training step of the equivariant cell graph transformer at yeast scale.

    python bench/cell_graph_transformer.py [--genes 6607] [--d-model 96] [--layers 8] [--heads 12]
                                           [--batch 64] [--graphs 4] [--variants sdpa materialize]

Each variant runs in a fresh process (peak RSS from ``resource.getrusage``): ``sdpa`` computes attention with
``scaled_dot_product_attention`` and softmax rows only for the sampled rows of the 4 regularised graphs (target:
peak <= 4 GB); ``materialize`` builds the full [heads, N+1, N+1] float32 maps in every layer (about 2.1 GB per
layer at N = 6,607 and 12 heads, kept for the backward pass). Both use activation checkpointing of the
Type I transform and expression readout ([B, N, d] activations recomputed in backward). Graphs: random, 20 edges per gene, seeded.
Measured 2026-11-22 on the shared 2-core machine (load ~6): sdpa, 8 layers, 4 graphs: step 72 s (cpu 52 s),
peak 3.65 GB; 1 layer, 1 graph: sdpa 3.30 GB / 18 s vs materialize 10.47 GB / 37 s, so the materialising
variant needs ~7 GB more per layer and does not fit in 23 GB RAM at 8 layers (run it with --layers 1 or 2).
Prints one JSON line per variant (step seconds, peak RSS in GB). Timings on a shared machine are noisy; cpu_s
is the load-independent figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(args) -> dict:
    import torch

    from cellgraph.models import cell_graph_transformer as cgt

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    n = args.genes
    g = torch.Generator().manual_seed(0)
    graphs = {f"g{k}": (torch.randint(0, n, (2, 20 * n), generator=g), None, False) for k in range(args.graphs)}
    reg = {f"g{k}": [k % args.layers, k % args.heads, 0.1] for k in range(args.graphs)}
    cfg = cgt.CGTConfig(n_genes=n, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, ffn_mult=4,
                        graph_reg=reg, row_sample_rate=0.1, materialize_attention=args.variant == "materialize",
                        checkpoint=True)
    model = cgt.build_model("equivariant", cfg, graphs)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    b = args.batch
    sizes = torch.randint(1, 4, (b,), generator=g)
    batch = {"pert_ptr": torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)]),
             "pert_idx": torch.randint(0, n, (int(sizes.sum()),), generator=g),
             "pert_type": torch.zeros(int(sizes.sum()), dtype=torch.long),
             "y_fitness": torch.rand(b), "m_fitness": torch.ones(b, dtype=torch.bool),
             "y_expression": torch.randn(b, n), "m_expression": torch.rand(b, n, generator=g) < 0.5}
    t0, c0 = time.perf_counter(), time.process_time()
    model.train()
    out, reg_loss, _ = model(batch)
    loss, _ = cgt.multitask_loss(out, batch, {"fitness": 1.0, "expression": 1.0})
    (loss + reg_loss).backward()
    opt.step()
    return {"variant": args.variant, "genes": n, "d_model": args.d_model, "layers": args.layers, "heads": args.heads,
            "batch": b, "graphs": args.graphs, "step_s": round(time.perf_counter() - t0, 2),
            "cpu_s": round(time.process_time() - c0, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--genes", type=int, default=6607)
    p.add_argument("--d-model", type=int, default=96)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--graphs", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=["sdpa", "materialize"])
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(one(args)))
        return
    for v in args.variants:
        cmd = [sys.executable, __file__, "--variant", v] + [
            f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("genes", "d_model", "layers", "heads", "batch",
                                                                   "graphs", "threads")]
        r = subprocess.run(cmd, capture_output=True, text=True)
        line = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else json.dumps(
            {"variant": v, "error": f"exit {r.returncode}", "stderr": r.stderr.strip()[-300:]})
        print(line, flush=True)


if __name__ == "__main__":
    main()
