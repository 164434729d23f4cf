"""Data-parallel training: exact sharding, and 2 CPU processes (Lightning DDP, gloo) = 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cellgraph.graphs.spectral import heat_kernel_coefficients
from cellgraph.training.pretrain import ShardedBatchSampler

from test_gremln import huri_shard
from test_train import write_split_shard

REPO = Path(__file__).resolve().parents[1]
CELLGRAPH = str(Path(sys.executable).parent / "cellgraph")
N_BINS = 10


def write_token_dir(folder: Path, n_train: int = 19, n_val: int = 11, seed: int = 1) -> Path:
    """train.npz / val.npz / vocab.tsv of cells whose graphs are real HuRI subgraphs, and coefficients.json."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val
    arrays, vocab = huri_shard(lengths=tuple(int(x) for x in rng.integers(6, 14, n)), n_bins=N_BINS, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, idx in (("train", np.arange(n_train)), ("val", np.arange(n_train, n))):
        write_split_shard(folder / f"{split}.npz", arrays, split, idx)
    (folder / "vocab.tsv").write_text("token_id\tgene\n" + "".join(f"{i}\t{g}\n" for i, g in enumerate(vocab)))
    coeffs = heat_kernel_coefficients(0.1, 1e-6)
    (folder / "coefficients.json").write_text(json.dumps(
        {"beta": 0.1, "tol": 1e-6, "K": len(coeffs) - 1, "coefficients": coeffs.tolist()}))
    return folder


def train_cmd(tokens: Path, out: Path, *extra: str, epochs: int = 2, batch: int = 8) -> list[str]:
    return [CELLGRAPH, "train", "--tokens-dir", str(tokens), "--coefficients", str(tokens / "coefficients.json"),
            "--model", "gremln", "--preset", "demo", "--seed", "5", "--max-epochs", str(epochs),
            "--batch-size", str(batch), "--threads", "1", "--checkpoint-dir", str(out / "ck"),
            "--out-dir", str(out / "model"), *extra]


def clean_env() -> dict[str, str]:
    """The environment without launcher variables of an enclosing job (Slurm, torchrun)."""
    drop = ("SLURM_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_", "NODE_RANK", "LIGHTNING_", "TORCHELASTIC")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def read_metrics(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter="\t", skiprows=1, ndmin=2)


def max_weight_difference(a: Path, b: Path) -> float:
    sa = torch.load(a, map_location="cpu", weights_only=True)["state_dict"]
    sb = torch.load(b, map_location="cpu", weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


@pytest.mark.parametrize("n,batch,world", [(19, 8, 2), (16, 8, 2), (5, 8, 4), (23, 6, 3), (1, 4, 2)])
def test_sharding_has_no_duplicates_or_gaps_and_matches_one_process(n, batch, world):
    one = ShardedBatchSampler(n, batch, 0, 1, seed=7)
    ranks = [ShardedBatchSampler(n, batch, r, world, seed=7) for r in range(world)]
    for epoch in (0, 3):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        per_rank = [list(s) for s in ranks]
        assert len({len(p) for p in per_rank}) == 1  # every rank runs the same number of steps
        assert all(len({len(p[k]) for p in per_rank}) == 1 for k in range(len(per_rank[0])))  # of equal sizes
        seen = [i for p in per_rank for b in p for i in b if i >= 0]
        assert sorted(seen) == list(range(n))  # every cell exactly once
        for k, global_batch in enumerate(one):  # step k of W ranks = step k of one process
            assert sorted(i for p in per_rank for i in p[k] if i >= 0) == sorted(global_batch)
    one.set_epoch(0)
    e0 = list(one)
    one.set_epoch(1)
    assert n == 1 or list(one) != e0  # reshuffled per epoch
    with pytest.raises(ValueError, match="multiple of the world size"):
        ShardedBatchSampler(n, 7, 0, 2)


def test_two_processes_reach_the_weights_of_one(tmp_path):
    tokens = write_token_dir(tmp_path / "tokens")
    env = clean_env()
    runs = {}
    for devices in (1, 2):
        out = tmp_path / f"d{devices}"
        t0 = time.perf_counter()
        proc = subprocess.run(train_cmd(tokens, out, "--devices", str(devices)), capture_output=True, text=True,
                              env=env, timeout=300)
        runs[devices] = time.perf_counter() - t0
        assert proc.returncode == 0, proc.stderr[-4000:]
        report = json.loads((out / "ck/report.json").read_text())
        assert report["world_size"] == devices and report["global_batch"] == 8
    diff = max_weight_difference(tmp_path / "d1/model/model.pt", tmp_path / "d2/model/model.pt")
    print(f"max |w1 - w2| = {diff:.3g}; wall 1 proc {runs[1]:.1f} s, 2 procs {runs[2]:.1f} s")
    assert diff < 1e-5
    m1, m2 = read_metrics(tmp_path / "d1/model/metrics.tsv"), read_metrics(tmp_path / "d2/model/metrics.tsv")
    assert m1.shape == m2.shape == (2, 4)
    np.testing.assert_allclose(m2, m1, rtol=0, atol=2e-5)  # metrics are reduced over both ranks
    # training moved the weights: the comparison is not between two untrained models
    import lightning.pytorch as pl
    from cellgraph.models.gremln import GREmLN, GREmLNConfig

    saved = torch.load(tmp_path / "d1/model/model.pt", map_location="cpu", weights_only=True)
    pl.seed_everything(5, verbose=False)
    init = GREmLN(GREmLNConfig(**saved["config"])).state_dict()
    assert max(float((init[k] - saved["state_dict"][k]).abs().max()) for k in init) > 1e-3
    # only rank 0 wrote: one model, one metrics file, no stray outputs of rank 1
    assert sorted(p.name for p in (tmp_path / "d2/model").iterdir()) == ["metrics.tsv", "model.pt"]


def test_global_batch_must_split_evenly(tmp_path):
    tokens = write_token_dir(tmp_path / "tokens", n_train=4, n_val=2)
    proc = subprocess.run(train_cmd(tokens, tmp_path / "o", "--devices", "3", batch=8), capture_output=True,
                          text=True, env=clean_env(), timeout=120)
    assert proc.returncode == 2
    assert "--batch-size 8" in proc.stderr and "3" in proc.stderr
    assert not (tmp_path / "o/model").exists()
