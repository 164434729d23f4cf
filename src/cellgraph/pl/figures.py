"""Paper figures and tables from the evaluation results of the GREmLN and vanilla models.

Reads ``{evaluate_dir}/{model}/`` (:data:`RESULT_FILES`: ``annotation.json``, ``edge_recovery.json``,
``edge_curves.npz``, ``probe.json``, ``probe_scatter.npz``, ...; written by :mod:`cellgraph.tl.evaluate`) for
every model (:func:`load_results`) and makes (:func:`paper_figures`, :func:`paper_tables`; ``cellgraph figures``,
:mod:`cellgraph.cli.figures`, writes them)

- ``confusion_matrices.png``: row-normalised confusion matrices of the mean-pool probe on the seen test
  cells (split 0), one panel per model, one shared colour scale [0, 1], counts written in the cells
  (GREmLN, Zhang et al. 2025, Fig. 1);
- ``roc_pr_curves.png``: ROC and precision-recall curves of hidden-edge recovery, both models (Fig. 2);
- ``linear_probe.png``: true vs predicted expression of the ridge probe on test tokens, one panel per
  model (Fig. 4);
- ``table1_cell_type.{csv,md}``: per model x embedding {mean-pool, CLS} x set {seen test, with held-out}:
  precision, recall, macro-F1 (mean and sd over the splits) and the held-out types' F1 (Table 1);
- ``table2_ablation.{csv,md}``: per model: annotation macro-F1, masked-token cross-entropy against the
  per-gene and per-cell baselines, the graph-removal change, hidden-edge AUROC (95% CI) and AP (and the
  random-feature control AUROC), probe R^2; then rows for the annotation baselines (PCA on all genes and on
  the vocabulary, bag of genes, the random-initialised encoder) (Table 2);
- ``table2_paired.{csv,md}``: GREmLN minus vanilla, paired, on annotation and hidden-edge recovery.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import require_file

log = logging.getLogger(__name__)

__all__ = [
    "RESULT_FILES",
    "load_results",
    "plot_confusion_matrices",
    "plot_roc_pr",
    "plot_linear_probe",
    "table1",
    "table2",
    "paired_differences",
    "paired_edge_auroc",
    "markdown_table",
    "paper_figures",
    "paper_tables",
    "FIGURE_FILES",
    "TABLE_NAMES",
]

RESULT_FILES = ("annotation.json", "edge_recovery.json", "edge_curves.npz", "probe.json", "probe_scatter.npz",
                "baselines.json", "masked.json", "edge_scores.tsv")
BASELINES = {"pca_all_genes": "PCA 50, all genes", "pca_vocabulary": "PCA 50, vocabulary genes",
             "bag_of_genes": "bag of genes (which vocabulary genes are tokens)",
             "random_init_mean_pool": "random-initialised encoder, mean-pool"}
EMBEDDINGS = {"mean_pool": "mean-pool", "cls": "CLS"}
SETS = {"seen_test": "seen test", "with_heldout": "with held-out"}
COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]


def load_results(evaluate_dir: str | Path, models: list[str]) -> dict[str, dict[str, Any]]:
    """Read every model's evaluation files into ``{model: {file stem: dict or npz arrays}}``.

    Parameters
    ----------
    evaluate_dir : str or Path
        Folder with one folder per model, each holding :data:`RESULT_FILES` (written by
        :mod:`cellgraph.tl.evaluate`).
    models : list of str
        Model folder names, in the order of the returned dict.

    Returns
    -------
    dict
        ``{model: {stem: contents}}``: JSON files as dicts, ``edge_scores.tsv`` as a DataFrame, ``.npz`` files
        as ``{array name: numpy.ndarray}`` (``edge_curves``: ``roc_fpr, roc_tpr, pr_precision, pr_recall,
        scores, labels``; ``probe_scatter``: ``true, pred``, each [n]).

    Raises
    ------
    InputError
        Naming the first missing or unreadable file, or a JSON file lacking a required key.
    """
    out: dict[str, dict[str, Any]] = {}
    required = {"annotation": ("embeddings",), "edge_recovery": ("pooled",), "probe": ("r2",)}
    for m in models:
        res: dict[str, Any] = {}
        for name in RESULT_FILES:
            path = require_file(Path(evaluate_dir) / m / name, f"evaluate results of model {m!r}")
            stem = name.split(".")[0]
            try:
                if name.endswith(".json"):
                    res[stem] = json.loads(path.read_text())
                elif name.endswith(".tsv"):
                    import pandas as pd

                    res[stem] = pd.read_csv(path, sep="\t")
                else:
                    with np.load(path, allow_pickle=False) as z:
                        res[stem] = {k: z[k] for k in z.files}
            except Exception as err:  # noqa: BLE001 - any parse failure is the file's fault
                raise InputError(f"{path}: cannot be read ({type(err).__name__}: {err})") from err
            for key in required.get(stem, ()):
                if key not in res[stem]:
                    raise InputError(f"{path}: missing key {key!r}")
        for key in ("roc_fpr", "roc_tpr", "pr_precision", "pr_recall", "scores", "labels"):
            if key not in res["edge_curves"]:
                raise InputError(f"{Path(evaluate_dir) / m / 'edge_curves.npz'}: missing array {key!r}")
        for key in ("true", "pred"):
            if key not in res["probe_scatter"]:
                raise InputError(f"{Path(evaluate_dir) / m / 'probe_scatter.npz'}: missing array {key!r}")
        out[m] = res
    return out


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrices(results: dict[str, dict[str, Any]], embedding: str = "mean_pool",
                            which: str = "seen_test"):
    """One row-normalised confusion-matrix panel per model (shared colour scale 0..1, one colour bar).

    Each cell shows the row fraction and, in brackets, the count; panel titles give macro-F1 mean ± sd.

    Parameters
    ----------
    results : dict
        ``{model: {file stem: contents}}`` as returned by :func:`load_results`.
    embedding : str
        Key of :data:`EMBEDDINGS`: ``mean_pool`` or ``cls``.
    which : str
        Key of :data:`SETS`: ``seen_test`` or ``with_heldout``.

    Returns
    -------
    matplotlib.figure.Figure
        ``len(results)`` panels plus the colour-bar axes.

    References
    ----------
    GREmLN, Zhang et al. 2025, Fig. 1.
    """
    plt = _mpl()
    models = list(results)
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models) + 1, 5), squeeze=False,
                             layout="constrained")
    im = None
    for ax, m in zip(axes[0], models):
        cm = results[m]["annotation"]["embeddings"][embedding][which]["confusion_matrix"]
        norm, counts, labels = np.asarray(cm["normalized"]), np.asarray(cm["counts"]), cm["labels"]
        im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues")
        k = len(labels)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{norm[i, j]:.2f}\n({counts[i, j]})", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.6 else "black")
        ax.set_xticks(range(k), labels, rotation=45, ha="right")
        ax.set_yticks(range(k), labels)
        ax.set_xlabel("predicted cell type")
        ax.set_ylabel("true cell type")
        f1 = results[m]["annotation"]["embeddings"][embedding][which]["macro_f1"]
        ax.set_title(f"{m}: macro-F1 {f1['mean']:.3f} ± {f1['sd']:.3f}")
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="fraction of true class (row-normalised)")
    fig.suptitle(f"Cell-type annotation, {EMBEDDINGS[embedding]} embedding, {SETS[which]} cells (split 0)")
    return fig


def plot_roc_pr(results: dict[str, dict[str, Any]]):
    """ROC (left) and precision-recall (right) curves of hidden-edge recovery for every model.

    Hidden edges (removed from every cell graph before pretraining) against negatives matched on the source
    gene (:func:`cellgraph.tl.evaluate.hidden_edge_recovery`). Models whose pooled AUROC is None (no hidden
    edge) are not drawn.

    Parameters
    ----------
    results : dict
        ``{model: {file stem: contents}}`` as returned by :func:`load_results` (``edge_curves`` and
        ``edge_recovery`` used).

    Returns
    -------
    matplotlib.figure.Figure
        The Figure (2 axes).

    References
    ----------
    GREmLN, Zhang et al. 2025, Fig. 2.
    """
    plt = _mpl()
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(11, 5), layout="constrained")
    for c, (m, res) in zip(COLOURS * 4, results.items()):
        cur, pooled = res["edge_curves"], res["edge_recovery"]["pooled"]
        if pooled["auroc"] is None:  # no hidden edge to score (no network edges)
            continue
        ax_roc.plot(cur["roc_fpr"], cur["roc_tpr"], color=c, lw=2.2, label=f"{m} (AUROC {pooled['auroc']:.3f})")
        ax_pr.plot(cur["pr_recall"], cur["pr_precision"], color=c, lw=2.2,
                   label=f"{m} (AP {pooled['average_precision']:.3f})")
    labels = next(iter(results.values()))["edge_curves"]["labels"]
    ax_roc.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="chance")
    if labels.size:
        base = float(np.mean(labels))
        ax_pr.axhline(base, color="grey", ls="--", lw=0.8, label=f"chance ({base:.2f})")
    else:
        for ax in (ax_roc, ax_pr):
            ax.text(0.5, 0.5, "no hidden edges to score:\nthe cell graphs have no edge", ha="center", va="center",
                    transform=ax.transAxes)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="Hidden-edge recovery: ROC",
               xlim=(0, 1), ylim=(0, 1.01))
    ax_pr.set(xlabel="recall", ylabel="precision", title="Hidden-edge recovery: precision-recall",
              xlim=(0, 1), ylim=(0, 1.01))
    for ax, loc in ((ax_roc, "lower right"), (ax_pr, "lower left")):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc=loc, fontsize=8)
    return fig


def plot_linear_probe(results: dict[str, dict[str, Any]]):
    """Scatter of true vs ridge-predicted expression on test tokens, one panel per model (Figure).

    Parameters
    ----------
    results : dict
        ``{model: {file stem: contents}}`` as returned by :func:`load_results` (``probe_scatter`` arrays
        ``true``, ``pred`` [n], log1p-normalised expression; ``probe`` R^2 in the titles).

    Returns
    -------
    matplotlib.figure.Figure
        ``len(results)`` panels with shared axes and a y = x line.

    References
    ----------
    GREmLN, Zhang et al. 2025, Fig. 4.
    """
    plt = _mpl()
    models = list(results)
    fig, axes = plt.subplots(1, len(models), figsize=(4.8 * len(models), 4.6), squeeze=False,
                             layout="constrained", sharex=True, sharey=True)
    for ax, c, m in zip(axes[0], COLOURS * 4, models):
        sc = results[m]["probe_scatter"]
        t, p = sc["true"], sc["pred"]
        ax.scatter(t, p, s=4, alpha=0.35, color=c, rasterized=True)
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=0.8)
        ax.set(xlabel="true expression (log1p normalised)", ylabel="predicted expression",
               title=f"{m}: R² = {results[m]['probe']['r2']:.3f} (n={len(t)} shown)")
    fig.suptitle("Linear probe: gene-token embedding -> expression (ridge, test tokens)")
    return fig


def _pm(d: dict[str, Any]) -> tuple[float, float]:
    return float(d["mean"]), float(d["sd"])


def table1(results: dict[str, dict[str, Any]]):
    """Table 1 as a DataFrame: one row per model x embedding x set, metrics as ``*_mean``/``*_sd``.

    Parameters
    ----------
    results : dict
        ``{model: {file stem: contents}}`` as returned by :func:`load_results`.

    Returns
    -------
    pandas.DataFrame
        Columns model, embedding, set, n_splits, precision/recall/macro_f1 ``_mean`` and ``_sd`` (over the probe
        splits), heldout_types (comma-joined), heldout_f1_mean and heldout_f1_sd (per split the mean F1 of the
        held-out types, then mean and sd (ddof=1) over splits; NaN without held-out types). Missing
        (embedding, set) combinations have no row.
    """
    import pandas as pd

    rows = []
    for m, res in results.items():
        for e, e_name in EMBEDDINGS.items():
            for s, s_name in SETS.items():
                r = res["annotation"]["embeddings"].get(e, {}).get(s)
                if r is None:
                    continue
                row: dict[str, Any] = {"model": m, "embedding": e_name, "set": s_name,
                                       "n_splits": len(r["macro_f1"]["values"])}
                for k in ("precision", "recall", "macro_f1"):
                    row[f"{k}_mean"], row[f"{k}_sd"] = _pm(r[k])
                held = r.get("heldout_types", {})
                row["heldout_types"] = ",".join(held)
                if held:
                    f1s = np.array([v["f1"]["values"] for v in held.values()]).mean(axis=0)
                    row["heldout_f1_mean"] = float(f1s.mean())
                    row["heldout_f1_sd"] = float(f1s.std(ddof=1)) if f1s.size > 1 else 0.0
                else:
                    row["heldout_f1_mean"] = row["heldout_f1_sd"] = np.nan
                rows.append(row)
    return pd.DataFrame(rows)


def table2(results: dict[str, dict[str, Any]]):
    """Table 2 (ablation) as a DataFrame: one row per model, then one row per annotation baseline.

    Model rows: annotation macro-F1 (mean-pool; mean and sd over the probe splits), masked-token cross-entropy
    (nats) of the model and of the per-gene and per-cell baselines at the same masked positions, the
    relative change of the embeddings when the graph is removed at inference, hidden-edge AUROC with its
    bootstrap 95% CI, AP, the random-feature control, probe R^2. Baseline rows (same split, same probe):
    PCA on all genes and on the vocabulary, bag of genes, and the random-initialised encoder of each model.

    Parameters
    ----------
    results : dict
        ``{model: {file stem: contents}}`` as returned by :func:`load_results`.

    Returns
    -------
    pandas.DataFrame
        Column ``model`` (model or baseline name) and the metric columns (``annotation_macro_f1_mean``/``_sd``,
        ``masked_ce*``, ``masked_accuracy``, ``graph_removal_change``, ``edge_auroc``, ``edge_auroc_ci`` as
        "low-high", ``edge_ap``, ``n_hidden_edges``, ``probe_r2``, ...); baseline rows fill only the
        annotation columns.
    """
    import pandas as pd

    rows = []
    for m, res in results.items():
        emb = res["annotation"]["embeddings"]["mean_pool"]
        row: dict[str, Any] = {"model": m}
        row["annotation_macro_f1_mean"], row["annotation_macro_f1_sd"] = _pm(emb["seen_test"]["macro_f1"])
        if "with_heldout" in emb:
            row["heldout_macro_f1_mean"], row["heldout_macro_f1_sd"] = _pm(emb["with_heldout"]["macro_f1"])
        mk = res["masked"]
        row["masked_ce"] = mk["model"]["cross_entropy"]
        row["masked_ce_per_gene"] = mk["per_gene"]["cross_entropy"]
        row["masked_ce_per_cell"] = mk["per_cell"]["cross_entropy"]
        if "per_gene_x_complement" in mk:
            row["masked_ce_per_gene_x_complement"] = mk["per_gene_x_complement"]["cross_entropy"]
        row["masked_accuracy"] = mk["model"]["accuracy"]
        gr = res["annotation"].get("graph_removal", {})
        row["graph_removal_change"] = gr.get("relative_change_mean_pool") if gr.get("applicable") else None
        er = res["edge_recovery"]
        row["edge_auroc"] = er["pooled"]["auroc"]
        row["edge_auroc_ci"] = (None if er["pooled"].get("auroc_ci_low") is None else
                                f"{er['pooled']['auroc_ci_low']:.3f}-{er['pooled']['auroc_ci_high']:.3f}")
        row["edge_ap"] = er["pooled"]["average_precision"]
        if "control_random_features" in er:
            row["edge_auroc_random_features"] = er["control_random_features"]["auroc"]
        row["n_hidden_edges"] = er["pooled"].get("n_hidden")
        row["probe_r2"] = res["probe"]["r2"]
        rows.append(row)
    first = next(iter(results.values()))["baselines"]
    for key, name in BASELINES.items():
        for m, res in results.items():
            if key.startswith("random_init"):
                name_m = f"{name} ({m})"
            elif m != next(iter(results)):
                continue  # model-independent baselines: one row
            else:
                name_m = name
            r = (res["baselines"] if key.startswith("random_init") else first)[key]
            rows.append({"model": name_m, "annotation_macro_f1_mean": float(r["mean"]),
                         "annotation_macro_f1_sd": float(r["sd"])})
    return pd.DataFrame(rows)


def paired_differences(results: dict[str, dict[str, Any]], a: str = "gremln", b: str = "vanilla",
                       n_boot: int = 1000, seed: int = 0):
    """``a`` minus ``b``, paired: annotation macro-F1 over the probe splits and hidden-edge AUROC over edges.

    Edge AUROC: both models score the same hidden edges and source-matched negatives (``edge_scores.tsv``,
    joined on ``group, source, target, label``; :func:`paired_edge_auroc`); the 95% CI resamples hidden edges
    (each with its negatives) with replacement, ``n_boot`` times (seeded). Annotation: the per-split
    differences of the seen-test macro-F1 (one pretraining seed: the splits share the model, so this is not a
    seed interval, and ci_low/ci_high are the min and max; ``snakemake ablation`` gives the interval over
    seeds).

    Parameters
    ----------
    results : dict
        ``{model: {file stem: contents}}`` as returned by :func:`load_results`.
    a, b : str
        The two models compared, ``a`` minus ``b``.
    n_boot : int
        Bootstrap draws of the edge-AUROC CI.
    seed : int
        Seed of the bootstrap.

    Returns
    -------
    pandas.DataFrame
        One row per metric: metric, difference, ci_low, ci_high, n, unit; empty (these columns) if a model is
        missing. The AUROC row is left out when no hidden edge was scored by both.
    """
    import pandas as pd

    if a not in results or b not in results:
        return pd.DataFrame(columns=["metric", "difference", "ci_low", "ci_high", "n", "unit"])
    fa = np.asarray(results[a]["annotation"]["embeddings"]["mean_pool"]["seen_test"]["macro_f1"]["values"])
    fb = np.asarray(results[b]["annotation"]["embeddings"]["mean_pool"]["seen_test"]["macro_f1"]["values"])
    d = fa - fb
    rows = [{"metric": "annotation macro-F1 (mean-pool)", "difference": float(d.mean()),
             "ci_low": float(d.min()), "ci_high": float(d.max()), "n": int(d.size),
             "unit": "probe splits (min-max, one pretraining seed)"}]
    edge = paired_edge_auroc(results[a]["edge_scores"], results[b]["edge_scores"], n_boot, seed)
    if edge is not None:
        rows.append({"metric": "hidden-edge AUROC", **edge, "unit": "hidden edges (bootstrap 95% CI)"})
    return pd.DataFrame(rows)


def paired_edge_auroc(scores_a, scores_b, n_boot: int = 1000, seed: int = 0) -> dict[str, float] | None:
    """AUROC of model a minus model b on the hidden edges and negatives both scored, with a bootstrap 95% CI.

    Pairs are joined on ``group, source, target, label``; a hidden edge (group) counts if both scored it; the
    bootstrap resamples hidden edges with their negatives (draws with a single class are skipped).

    Parameters
    ----------
    scores_a, scores_b : pandas.DataFrame
        ``edge_scores.tsv`` tables (``source, target, label, score, group``) of model a and model b.
    n_boot : int
        Bootstrap draws.
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    dict or None
        ``{difference, ci_low, ci_high, n}`` (AUROC difference, 2.5% and 97.5% bootstrap quantiles, number of
        hidden edges), or None when a table is empty or no hidden edge was scored by both.
    """
    from sklearn.metrics import roc_auc_score

    if not len(scores_a) or not len(scores_b):
        return None
    # a negative (source, g) can be drawn for two hidden edges of one source: the group is part of the key
    j = scores_a.merge(scores_b, on=["group", "source", "target", "label"], suffixes=("_a", "_b"))
    j = j[j["group"].isin(j.loc[j["label"] == 1, "group"])]
    if j["label"].nunique() < 2:
        return None
    g = j["group"].to_numpy()
    groups, inverse = np.unique(g, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(groups.size))
    members = np.split(order, starts[1:])
    y, s1, s2 = j["label"].to_numpy(), j["score_a"].to_numpy(), j["score_b"].to_numpy()
    diff = roc_auc_score(y, s1) - roc_auc_score(y, s2)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        take = np.concatenate([members[k] for k in rng.integers(0, groups.size, groups.size)])
        if np.unique(y[take]).size == 2:
            boots.append(roc_auc_score(y[take], s1[take]) - roc_auc_score(y[take], s2[take]))
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {"difference": float(diff), "ci_low": float(lo), "ci_high": float(hi), "n": int(groups.size)}


def markdown_table(df, pm: dict[str, str] | None = None, digits: int = 3) -> str:
    """A GitHub markdown table of ``df``.

    Parameters
    ----------
    df : pandas.DataFrame
        The table, one markdown row per row.
    pm : dict, optional
        ``label -> stem``: the columns ``stem_mean`` and ``stem_sd`` become one ``mean ± sd`` column named
        ``label`` (empty when the mean is NaN).
    digits : int
        Decimals of float cells (default 3); None and NaN cells read ``n/a``.

    Returns
    -------
    str
        Header, separator and one line per row, each ending with a newline.
    """
    pm = pm or {}
    merged = {f"{stem}_{x}" for stem in pm.values() for x in ("mean", "sd")}
    cols: list[tuple[str, Any]] = []
    for c in df.columns:
        if c in merged:
            stem = c[: -len("_mean")] if c.endswith("_mean") else None
            if stem is not None:
                label = next(k for k, v in pm.items() if v == stem)
                cols.append((label, lambda r, s=stem: "" if np.isnan(r[f"{s}_mean"])
                             else f"{r[f'{s}_mean']:.{digits}f} ± {r[f'{s}_sd']:.{digits}f}"))
        else:
            cols.append((c, lambda r, c=c: "n/a" if r[c] is None or (isinstance(r[c], float) and np.isnan(r[c]))
                         else f"{r[c]:.{digits}f}" if isinstance(r[c], float) else str(r[c])))
    lines = ["| " + " | ".join(name for name, _ in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(f(r) for _, f in cols) + " |")
    return "\n".join(lines) + "\n"


#: File names of the paper figures, in the order :func:`paper_figures` returns them.
FIGURE_FILES = ("confusion_matrices.png", "roc_pr_curves.png", "linear_probe.png")
#: Stems of the paper tables (each written as ``.csv`` and ``.md``), in the order :func:`paper_tables` returns them.
TABLE_NAMES = ("table1_cell_type", "table2_ablation", "table2_paired")


def paper_figures(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The paper figures of the evaluation results, by file name (:data:`FIGURE_FILES`).

    Parameters
    ----------
    results : dict
        ``{model: {file stem: contents}}`` as returned by :func:`load_results`.

    Returns
    -------
    dict
        ``confusion_matrices.png`` -> :func:`plot_confusion_matrices` (GREmLN, Zhang et al. 2025, Fig. 1),
        ``roc_pr_curves.png`` -> :func:`plot_roc_pr` (Fig. 2), ``linear_probe.png`` ->
        :func:`plot_linear_probe` (Fig. 4); each value a matplotlib Figure, not yet saved.
    """
    return {
        "confusion_matrices.png": plot_confusion_matrices(results),
        "roc_pr_curves.png": plot_roc_pr(results),
        "linear_probe.png": plot_linear_probe(results),
    }


def paper_tables(results: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, dict[str, str]]]:
    """The paper tables of the evaluation results, each with the columns its markdown merges into ``mean ± sd``.

    Parameters
    ----------
    results : dict
        ``{model: {file stem: contents}}`` as returned by :func:`load_results`.

    Returns
    -------
    dict
        Table stem (:data:`TABLE_NAMES`) -> ``(DataFrame, pm)``: ``table1_cell_type`` (:func:`table1`, Table 1),
        ``table2_ablation`` (:func:`table2`, Table 2), ``table2_paired`` (:func:`paired_differences`, GREmLN
        minus vanilla with the default 1000 bootstrap draws, seed 0); ``pm`` is the ``label -> column stem``
        mapping of :func:`markdown_table`.
    """
    t1, t2, t3 = table1(results), table2(results), paired_differences(results)
    return {
        "table1_cell_type": (t1, {"precision": "precision", "recall": "recall", "macro-F1": "macro_f1",
                                  "held-out type F1": "heldout_f1"}),
        "table2_ablation": (t2, {"annotation macro-F1": "annotation_macro_f1",
                                 "macro-F1 with held-out": "heldout_macro_f1"}),
        "table2_paired": (t3, {}),
    }
