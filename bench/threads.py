"""Benchmark: a demo training epoch alone and beside competing CPU-bound processes.

    python bench/threads.py [--threads 2] [--competitors 4] [--steps 40] [--repeats 3]

Each condition runs in a fresh process that bounds its pools with ``cellgraph.runtime.limit_thread_pools``
(what ``cellgraph <stage>`` does with the rule's threads) and times ``--steps`` masked training steps of the
demo GREmLN (d 64, 2 blocks, 4 heads, batch 32, 1 + 256 tokens, 50 bins, Chebyshev heat kernel at beta 0.1
on random cell graphs). An epoch of the demo run is 156 such steps (2,098 train + 2,896 pretraining cells,
batch 32); the printed epoch time is that extrapolation. Conditions:

  alone            threads = --threads, nothing else running
  loaded           the same beside --competitors busy processes (one core-bound numpy loop each)
  loaded-1thread   one thread beside the same competitors
  loaded-passive   --threads with OMP_WAIT_POLICY=passive (OpenMP workers sleep instead of spinning)

Ratios are against "alone" measured in the same run (median over --repeats). Timings on a shared machine
are noisy; the CPU seconds of the training process are printed beside the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

STEPS_PER_EPOCH = 156

TRAIN = r"""
import json, resource, sys, time
import numpy as np, torch
from cellgraph.runtime import limit_thread_pools
from cellgraph.models.gremln import GREmLN, GREmLNConfig
from cellgraph.graphs.spectral import heat_kernel_coefficients
from cellgraph.training.pretrain import mask_positions, masked_step

threads, steps = int(sys.argv[1]), int(sys.argv[2])
limit_thread_pools(threads)
torch.manual_seed(0)
rng = np.random.default_rng(0)
b, n, vocab, n_bins = 32, 256, 1002, 50
coef = heat_kernel_coefficients(0.1).tolist()
cfg = GREmLNConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=vocab, n_bins=n_bins, coefficients=coef,
                   chebyshev_order=len(coef) - 1)
model = GREmLN(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

def batch():
    lengths = rng.integers(n // 2, n + 1, size=b)
    am = np.arange(1 + n)[None, :] <= lengths[:, None]
    genes = np.where(am, rng.integers(2, vocab, size=(b, 1 + n)), 0)
    genes[:, 0] = 1
    bins = np.where(am, rng.integers(1, n_bins + 1, size=(b, 1 + n)), 0)
    lap = np.zeros((b, n, n), dtype=np.float32)
    for i in range(b):  # a sparse random cell graph, normalized Laplacian
        a = (rng.random((n, n)) < 0.01).astype(np.float32)
        a = np.triu(a, 1); a = a + a.T
        d = a.sum(1); inv = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1e-12)), 0)
        lap[i] = np.diag((d > 0).astype(np.float32)) - inv[:, None] * a * inv[None, :]
    return {"gene_ids": torch.from_numpy(genes), "bins": torch.from_numpy(bins),
            "attention_mask": torch.from_numpy(am), "laplacian": torch.from_numpy(lap)}

batches = [batch() for _ in range(4)]
cpu0, t0 = time.process_time(), time.perf_counter()
for s in range(steps):
    bt = batches[s % len(batches)]
    mask = mask_positions(bt["attention_mask"], torch.arange(b), 0.15, seed=0, epoch=s)
    loss, _, _ = masked_step(model, bt, mask)
    opt.zero_grad(); loss.backward(); opt.step()
print(json.dumps({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0,
                  "torch_threads": torch.get_num_threads()}))
"""

BUSY = r"""
import os, numpy as np
os.environ["OMP_NUM_THREADS"] = "1"
x = np.random.default_rng(0).random(200_000)
while True:
    x = np.sqrt(x * x + 1.0) - 0.5
"""


def run_training(threads: int, steps: int, passive: bool = False) -> dict:
    """One training measurement in a fresh process; returns wall_s, cpu_s and the torch thread count."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    if passive:
        env["OMP_WAIT_POLICY"] = "passive"
    else:
        env.pop("OMP_WAIT_POLICY", None)
    out = subprocess.run([sys.executable, "-c", TRAIN, str(threads), str(steps)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_competitors(k: int) -> list[subprocess.Popen]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", BUSY], env=env) for _ in range(k)]
    time.sleep(1.0)
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def measure(args) -> dict[str, list[dict]]:
    """Median-able repeats of each condition; the competitors run only during the loaded conditions."""
    results: dict[str, list[dict]] = {k: [] for k in ("alone", "loaded", "loaded-1thread", "loaded-passive")}
    run_training(args.threads, 2)  # warm the file cache and torch's import
    for _ in range(args.repeats):
        results["alone"].append(run_training(args.threads, args.steps))
        procs = start_competitors(args.competitors)
        try:
            results["loaded"].append(run_training(args.threads, args.steps))
            results["loaded-1thread"].append(run_training(1, args.steps))
            results["loaded-passive"].append(run_training(args.threads, args.steps, passive=True))
        finally:
            stop(procs)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--competitors", type=int, default=4)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import numpy as np

    results = measure(args)
    base = float(np.median([r["wall_s"] for r in results["alone"]]))
    print(f"cores {os.cpu_count()}, threads {args.threads}, competitors {args.competitors}, "
          f"{args.steps} steps x {args.repeats} repeats (an epoch = {STEPS_PER_EPOCH} steps)")
    print(f"{'condition':<16} {'wall s/step':>11} {'cpu s/step':>10} {'epoch s':>8} {'ratio':>6}")
    for name, runs in results.items():
        wall = float(np.median([r["wall_s"] for r in runs]))
        cpu = float(np.median([r["cpu_s"] for r in runs]))
        print(f"{name:<16} {wall / args.steps:>11.3f} {cpu / args.steps:>10.3f} "
              f"{wall / args.steps * STEPS_PER_EPOCH:>8.1f} {wall / base:>6.2f}")


if __name__ == "__main__":
    main()
