"""Tests of cellgraph.pl.figures on evaluation results made by cellgraph.tl.evaluate on a small real-data pipeline
(the `mini` and `evaluated` fixtures of test_evaluate.py)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from cellgraph.pl import figures as fg
from cellgraph.errors import InputError
from test_evaluate import evaluated, mini  # noqa: F401 - pytest fixtures

MODELS = ["gremln", "vanilla"]


@pytest.fixture(scope="module")
def results(evaluated):  # noqa: F811
    return fg.load_results(evaluated, MODELS)


def test_figures_have_the_expected_panels(results):
    import matplotlib.pyplot as plt

    fig = fg.plot_confusion_matrices(results)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 and len(fig.axes) == 3  # one panel per model + one shared colour bar
    assert all(ax.images[0].get_clim() == (0.0, 1.0) for ax in panels)
    labels = results["gremln"]["annotation"]["embeddings"]["mean_pool"]["seen_test"]["confusion_matrix"]["labels"]
    assert [t.get_text() for t in panels[0].get_xticklabels()] == labels
    assert np.allclose(panels[1].images[0].get_array(), np.array(
        results["vanilla"]["annotation"]["embeddings"]["mean_pool"]["seen_test"]["confusion_matrix"]["normalized"]))
    plt.close(fig)

    fig = fg.plot_roc_pr(results)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any(t.startswith("gremln") for t in legend) and any(t.startswith("vanilla") for t in legend)
    assert len(fig.axes[0].lines) == 2 + 1  # one curve per model, chance line
    plt.close(fig)

    fig = fg.plot_linear_probe(results)
    assert len(fig.axes) == 2
    assert [len(ax.collections[0].get_offsets()) for ax in fig.axes] == [
        len(results[m]["probe_scatter"]["true"]) for m in MODELS]
    plt.close(fig)


def test_tables_hold_both_models_and_all_metrics(results):
    t1 = fg.table1(results)
    assert len(t1) == 2 * 2 * 2  # model x embedding x set
    assert set(t1["model"]) == set(MODELS) and set(t1["embedding"]) == {"mean-pool", "CLS"}
    row = t1[(t1["model"] == "vanilla") & (t1["embedding"] == "CLS") & (t1["set"] == "with held-out")].iloc[0]
    src = results["vanilla"]["annotation"]["embeddings"]["cls"]["with_heldout"]
    assert row["macro_f1_mean"] == pytest.approx(src["macro_f1"]["mean"])
    assert row["recall_sd"] == pytest.approx(src["recall"]["sd"])
    assert row["heldout_f1_mean"] == pytest.approx(src["heldout_types"]["Monocyte"]["f1"]["mean"])
    t2 = fg.table2(results)
    assert list(t2["model"][:2]) == MODELS
    base = results["gremln"]["baselines"]
    for key, name in fg.BASELINES.items():  # baseline rows: same probe, same split, copied from baselines.json
        for m in (MODELS if key.startswith("random_init") else MODELS[:1]):
            label = f"{name} ({m})" if key.startswith("random_init") else name
            r = t2[t2["model"] == label].iloc[0]
            src = results[m]["baselines"][key] if key.startswith("random_init") else base[key]
            assert r["annotation_macro_f1_mean"] == pytest.approx(src["mean"])
    for m in MODELS:
        r = t2[t2["model"] == m].iloc[0]
        assert r["masked_ce"] == pytest.approx(results[m]["masked"]["model"]["cross_entropy"])
        assert r["masked_ce_per_cell"] == pytest.approx(results[m]["masked"]["per_cell"]["cross_entropy"])
        r = t2[t2["model"] == m].iloc[0]
        assert r["edge_auroc"] == pytest.approx(results[m]["edge_recovery"]["pooled"]["auroc"])
        assert r["edge_ap"] == pytest.approx(results[m]["edge_recovery"]["pooled"]["average_precision"])
        assert r["probe_r2"] == pytest.approx(results[m]["probe"]["r2"])
        assert r["annotation_macro_f1_mean"] == pytest.approx(
            results[m]["annotation"]["embeddings"]["mean_pool"]["seen_test"]["macro_f1"]["mean"])


def test_markdown_table_merges_mean_and_sd():
    df = pd.DataFrame({"model": ["a"], "f1_mean": [0.91234], "f1_sd": [0.01], "auroc": [0.5]})
    md = fg.markdown_table(df, {"macro-F1": "f1"})
    assert md.splitlines() == ["| model | macro-F1 | auroc |", "|---|---|---|", "| a | 0.912 ± 0.010 | 0.500 |"]


def test_figures_cli_writes_files(evaluated, tmp_path):  # noqa: F811
    from cellgraph.cli import main

    figs, tabs = tmp_path / "figures", tmp_path / "tables"
    assert main(["figures", "--evaluate-dir", str(evaluated), "--models", *MODELS,
                 "--figures-dir", str(figs), "--tables-dir", str(tabs)]) == 0
    for name in ("confusion_matrices.png", "roc_pr_curves.png", "linear_probe.png"):
        data = (figs / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    for name in ("table1_cell_type", "table2_ablation"):
        csv = pd.read_csv(tabs / f"{name}.csv")
        assert set(MODELS) <= set(csv["model"])
        md = (tabs / f"{name}.md").read_text()
        assert all(f"| {m} |" in md for m in MODELS) and "±" in md
    assert "edge_auroc" in (tabs / "table2_ablation.md").read_text()
    assert "probe_r2" in (tabs / "table2_ablation.md").read_text()


def test_figures_bad_input_names_the_file(evaluated, tmp_path, capsys):  # noqa: F811
    from cellgraph.cli import main

    ev_dir = tmp_path / "evaluate"
    shutil.copytree(evaluated, ev_dir)
    (ev_dir / "vanilla" / "probe.json").unlink()
    argv = ["figures", "--evaluate-dir", str(ev_dir), "--models", *MODELS,
            "--figures-dir", str(tmp_path / "f"), "--tables-dir", str(tmp_path / "t")]
    assert main(argv) == 2
    assert str(ev_dir / "vanilla" / "probe.json") in capsys.readouterr().err
    assert not (tmp_path / "f").exists() and not (tmp_path / "t").exists()
    (ev_dir / "vanilla" / "probe.json").write_text("{not json")
    with pytest.raises(InputError, match="probe.json"):
        fg.load_results(ev_dir, MODELS)
    with pytest.raises(InputError, match="absent/annotation.json"):
        fg.load_results(ev_dir, ["gremln", "absent"])


def test_no_network_edges_give_na_not_a_crash(results):
    """When the grn stage keeps no edge, evaluate reports edge recovery as not computed (None, empty curves):
    the ROC/PR figure says so and table 2 shows n/a, while the other columns keep their values."""
    import copy

    import matplotlib.pyplot as plt

    from cellgraph.tl import evaluate as ev

    summary, curves = ev._no_edge_recovery(0.15, {}, {"B": "no hidden edges"})
    assert summary["pooled"]["auroc"] is None and "not computed" in summary["status"]
    empty = {m: copy.deepcopy(r) | {"edge_recovery": summary, "edge_curves": curves} for m, r in results.items()}
    fig = fg.plot_roc_pr(empty)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("no hidden edges" in t for t in texts) and not any(line.get_label().startswith("gremln")
                                                                  for line in fig.axes[0].lines)
    plt.close(fig)
    t2 = fg.table2(empty)
    assert t2["edge_auroc"].isna().all()
    assert (t2["probe_r2"][:2] == fg.table2(results)["probe_r2"][:2]).all()
    assert "| n/a |" in fg.markdown_table(t2)


def test_paired_edge_auroc_is_paired_and_can_favour_either_model(results):
    """A model scoring hidden edges above their negatives beats one scoring them at random, with a CI that
    excludes 0; swapping the models flips the sign; identical scores give exactly 0."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(200), 11)
    label = np.tile([1] + [0] * 10, 200)
    base = pd.DataFrame({"source": [f"g{g}" for g in groups], "target": [f"t{i}" for i in range(groups.size)],
                         "label": label, "group": groups})
    good = base.assign(score=label + rng.normal(0, 0.5, groups.size))
    noise = base.assign(score=rng.normal(0, 1, groups.size))
    d = fg.paired_edge_auroc(good, noise, n_boot=200)
    assert d["n"] == 200 and d["difference"] > 0.3 and d["ci_low"] > 0
    assert fg.paired_edge_auroc(noise, good, n_boot=200)["difference"] == pytest.approx(-d["difference"])
    same = fg.paired_edge_auroc(good, good, n_boot=50)
    assert same["difference"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0
    t = fg.paired_differences(results)
    assert list(t["metric"])[0].startswith("annotation") and (t["ci_low"] <= t["difference"]).all()
