"""cellgraph.pl.ablation: paired GREmLN - vanilla differences over pretraining seeds, with t intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cellgraph.pl import ablation as ab


def _result(f1: float, ce: float, edge_scores: pd.DataFrame) -> dict:
    return {"annotation": {"embeddings": {"mean_pool": {"seen_test": {"macro_f1": {"mean": f1}}}}},
            "masked": {"model": {"cross_entropy": ce}}, "edge_recovery": {"pooled": {"auroc": 0.5}},
            "edge_scores": edge_scores}


def _scores(rng, signal: float) -> pd.DataFrame:
    groups = np.repeat(np.arange(100), 11)
    label = np.tile([1] + [0] * 10, 100)
    return pd.DataFrame({"source": [f"g{g}" for g in groups], "target": [f"t{i}" for i in range(groups.size)],
                         "label": label, "group": groups, "score": signal * label + rng.normal(0, 1, groups.size)})


def test_t_interval_matches_scipy():
    v = np.array([0.1, 0.3, -0.05, 0.2, 0.15])
    m, lo, hi = ab.t_interval(v)
    want = stats.t.interval(0.95, v.size - 1, loc=v.mean(), scale=stats.sem(v))
    assert m == pytest.approx(v.mean()) and (lo, hi) == pytest.approx(want)
    with pytest.raises(ValueError):
        ab.t_interval(np.array([1.0]))


def test_paired_over_seeds_sign_and_pairing():
    """GREmLN better by 0.05 macro-F1 in every seed and with stronger edge scores: every interval excludes 0
    on GREmLN's side; the per-seed differences are the paired ones."""
    rng = np.random.default_rng(0)
    runs = {}
    for s, base in enumerate([0.60, 0.70, 0.65, 0.62, 0.68]):
        runs[s] = {"gremln": _result(base + 0.05, 3.30, _scores(rng, 2.0)),
                   "vanilla": _result(base, 3.35, _scores(rng, 0.5))}
    rows = {r["metric"].split(": ", 1)[1]: r for r in ab.paired_over_seeds(runs)}
    f1 = rows["annotation macro-F1 (mean-pool)"]
    assert f1["difference"] == pytest.approx(0.05) and f1["seeds"] == 5
    assert f1["ci_low"] == pytest.approx(0.05) and f1["ci_high"] == pytest.approx(0.05)  # no seed variance
    ce = rows["masked cross-entropy (nats)"]
    assert ce["difference"] == pytest.approx(-0.05)
    edge = rows["hidden-edge AUROC (paired per edge)"]
    assert edge["ci_low"] > 0 and edge["hidden_edges_per_seed"] == 100
    # swapping the models flips every sign
    flipped = {r["metric"].split(": ", 1)[1]: r for r in ab.paired_over_seeds(runs, "vanilla", "gremln")}
    assert flipped["annotation macro-F1 (mean-pool)"]["difference"] == pytest.approx(-0.05)
    per_seed = pd.DataFrame(ab.seed_rows(runs))
    assert len(per_seed) == 10 and set(per_seed["model"]) == {"gremln", "vanilla"}
