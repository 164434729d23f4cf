r"""Papalexi forward prediction for unseen perturbations (``cellgraph perturb --task forward``).

Data: cells with ``obs.top_grna_frac >= --min-grna-frac`` (:func:`cellgraph.tl.perturb.load_papalexi`); the
universe is the measured genes plus the targets not measured; S = {target}, type ``deletion``.

Per seed (``--seeds``): the control cells are split in halves (:func:`cellgraph.tl.perturb_eval.split_controls`):
training labels are the mean change of a training perturbation's cells against the first half, every held-out
delta is measured against the second. The targets are split into ``--n-folds`` leave-perturbation-out
folds; no cell of a held-out target is used by anything fitted in that fold (a test checks it).

Model: :class:`~cellgraph.models.cell_graph_transformer.EquivariantCellGraphTransformer` without per-gene
identity rows; every gene is known by fixed features shared by seen and unseen targets through one learned
projection: random-walk-with-restart features of the full multigraph (:func:`cellgraph.graphs.gene_features.random_walk_features`,
computed once), with ``--gremln-model`` the GREmLN input gene embeddings where its vocabulary covers the gene
(:func:`cellgraph.graphs.gene_features.gremln_vectors`), and PCA loadings of the fold's training cells
(:func:`cellgraph.graphs.gene_features.expression_loadings`; always the last ``--n-pca`` + 1 columns).
One sample per training target (the mean change of its cells), each gene standardised by its sd over the
training targets (``--label-scale gene``), loss weights = the targets' split-half reliability on training cells
(:func:`training_weights`). The expression readout is an offset plus a learned correction whose last layer
starts at zero: the offset is the reliability-weighted mean training change
(:func:`cellgraph.tl.perturb_eval.weighted_mean_change`), with the mean own-gene change of the measured training
targets at the target's own gene; before training the model *is* the ``weighted_mean_change_own_gene``
baseline. The scalar readout learns the debiased perturbation score.

Early stopping: an inner leave-perturbation-out split of the training targets (``--inner-fraction``; with its
own halves of the training controls) is trained for ``--max-epochs``; every ``--eval-every`` epochs the
reliability-weighted mean inner Pearson-delta is read; the epoch count (0 = the offsets alone) is the smallest
within one standard error of the best (:func:`cellgraph.tl.perturb_eval.one_standard_error_choice`) and is then
used to train on all training targets.

Baselines, same split and metric code (:mod:`cellgraph.tl.perturb_eval`): ``no_change``, ``mean_change``,
``mean_change_own_gene`` (the mean own-gene change at the target's gene), ``weighted_mean_change`` and
``weighted_mean_change_own_gene`` (the model's offsets alone), ``linear_pca`` (Ahlmann-Eltze 2025; P = the
target's PCA gene embedding, zero when the target is not measured) and ``linear_graph`` (P = the target's
random-walk features).

Outputs in ``--out-dir``: ``metrics.tsv`` (seed, fold, perturbation, method: Pearson-delta on all measured
genes and on the top-20 DE genes, MSE, own-gene change, split-half reliability, noise ceiling, reliable),
``summary.tsv`` (per method and subset all / reliable / unreliable: means and bootstrap CIs over
perturbations), ``comparisons.tsv`` (paired one-sided Wilcoxon tests of the model against each baseline over
perturbations x seeds), ``own_gene.tsv``, ``score_predictions.tsv`` / ``score_summary.tsv`` (debiased
perturbation score), ``predictions.h5ad`` (obs = (seed, perturbation): ``perturbation``, ``seed``, ``fold``,
``n_cells``, ``split_half_r``, ``noise_ceiling``, ``reliable``; var = measured genes; ``layers["observed"]``
and one layer per method of predicted deltas, log units; X = observed), ``model.pt``, attention diagnostics,
``report.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import perturb as pt
from . import perturb_eval as pe
from ..graphs.gene_features import embedding_features, expression_loadings, gremln_vectors, random_walk_features
from ..io import atomic_path, write_json, write_tsv
from ..models import cell_graph_transformer as cgt

log = logging.getLogger(__name__)

BASELINES = ["no_change", "mean_change", "mean_change_own_gene", "weighted_mean_change",
             "weighted_mean_change_own_gene", "linear_pca", "linear_graph"]
MODEL = "equivariant_cgt"


def _default_graph_reg() -> dict:
    return {"physical": [0, 0, 0.1], "regulatory": [1, 1, 0.1]}


@dataclasses.dataclass(frozen=True)
class ForwardParams:
    """Options of Papalexi forward prediction (:func:`run_forward`; ``cellgraph perturb --task forward``).

    Attributes
    ----------
    control : obs.perturbation label of the control cells (``--control``, default ``"non-targeting"``).
    min_grna_frac : keep cells with ``obs.top_grna_frac`` >= this, a fraction (``--min-grna-frac``, default 0.8).
    preset : cell graph transformer preset, :data:`cellgraph.models.cell_graph_transformer.PRESETS`
        (``--preset``, default ``"demo"``).
    head : set readout, ``mean`` | ``cross_attention`` | ``hypersagnn`` (``--head``, default ``cross_attention``).
    graph_reg : {graph: [layer, head, lambda]} graph-regularised attention heads
        (:func:`cellgraph.tl.perturb.graph_reg_from_flags` of ``--graph-reg``; default physical on layer 0 head 0
        and regulatory on layer 1 head 1, lambda 0.1 each).
    n_folds : leave-perturbation-out folds per seed (``--n-folds``, default 5).
    max_epochs : most full-batch training steps; early stopping picks fewer (``--max-epochs``, default 150).
    seeds : one whole cross-validation per seed: control halves, folds, initialisation (``--seeds``, default (0,)).
    eval_every : inner validation every this many epochs (``--eval-every``, default 10).
    inner_fraction : share of the training targets held out for early stopping, in (0, 1)
        (``--inner-fraction``, default 0.25).
    reliable_threshold : split-half Pearson from which a perturbation counts as reliable
        (``--reliable-threshold``, default 0.6).
    attend : ``targets_to_regulators`` (directed graphs reversed) or ``regulators_to_targets``
        (``--attend``, default ``targets_to_regulators``).
    rwr_dim : SVD columns per random-walk feature block (``--rwr-dim``, default 16).
    n_pca : PCA gene loadings, model features and linear baseline (``--n-pca``, default 10).
    weight_decay : AdamW weight decay (``--weight-decay``, default 0.01).
    dropout : dropout of the cell graph transformer, a probability (``--dropout``, default 0.0).
    label_scale : labels divided by each gene's sd over training targets (``gene``) or by one overall sd
        (``global``) (``--label-scale``, default ``gene``).
    ridge : ridge lambda of the linear baselines (``--ridge``, default 0.1).
    diagnostics_every : attention diagnostics after every this-many-th epoch and the last one
        (``--diagnostics-every``, default 10).
    batch_size : samples per batch (``--batch-size``, default 1024).
    lr : AdamW learning rate (``--lr``, default 3e-3).
    score_weight : task weight of the perturbation score in the loss (``--score-weight``, default 0.1).
    """

    control: str = "non-targeting"
    min_grna_frac: float = 0.8
    preset: str = "demo"
    head: str = "cross_attention"
    graph_reg: dict = dataclasses.field(default_factory=_default_graph_reg)
    n_folds: int = 5
    max_epochs: int = 150
    seeds: tuple = (0,)
    eval_every: int = 10
    inner_fraction: float = 0.25
    reliable_threshold: float = 0.6
    attend: str = "targets_to_regulators"
    rwr_dim: int = 16
    n_pca: int = 10
    weight_decay: float = 0.01
    dropout: float = 0.0
    label_scale: str = "gene"
    ridge: float = 0.1
    diagnostics_every: int = 10
    batch_size: int = 1024
    lr: float = 3e-3
    score_weight: float = 0.1


# --------------------------------------------------------------------------------------------------
# Data shared by all seeds
# --------------------------------------------------------------------------------------------------


def load_context(params: ForwardParams, *, adata_path, multigraph_path, gremln_model=None) -> dict:
    """Everything that does not depend on the seed: expression, sets, graphs, graph features, reliability.

    Parameters
    ----------
    params : run options (``control``, ``min_grna_frac``, ``attend``, ``rwr_dim`` are read here).
    adata_path : Papalexi ECCITE-seq h5ad with raw counts (``--adata``; :func:`cellgraph.tl.perturb.load_papalexi`).
    multigraph_path : ``multigraph.npz`` of human genes (``--multigraph``).
    gremln_model : optional GREmLN ``model.pt`` whose input gene embeddings become extra gene features
        (``--gremln-model``; :func:`cellgraph.graphs.gene_features.gremln_vectors`).

    Returns
    -------
    dict
        :func:`cellgraph.tl.perturb.papalexi_arrays` (``genes`` [N], ``measured`` bool [N], ``expr`` float32
        [C, N] log units, ``perturbation`` [C], ...) plus ``graphs`` (restricted to the universe), ``rwr`` float32
        [N, F_rwr] random-walk features, ``gremln`` float32 [N, F_g] (F_g = 0 without a model), ``report``,
        ``targets`` (sorted non-control labels), ``ctrl_rows`` (control cell rows) and ``pos`` (gene -> column).

    Raises
    ------
    InputError
        If the h5ad or the multigraph is missing or malformed, or the GREmLN model cannot be read.
    """
    from ..graphs.multigraph import load_multigraph

    adata, report = pt.load_papalexi(adata_path, params.min_grna_frac, params.control)
    mg = load_multigraph(multigraph_path)
    d = pt.papalexi_arrays(adata, params.control, set(mg["nodes"]))
    graphs, kept = pt.restrict_graphs(mg, d["genes"], flip_directed=params.attend == "targets_to_regulators")
    rwr, rwr_names, rwr_rep = random_walk_features(mg, d["genes"], dim=params.rwr_dim, seed=0)
    gremln = np.zeros((len(d["genes"]), 0), np.float32)
    if gremln_model:
        vec, known, g_rep = gremln_vectors(gremln_model, d["genes"])
        gremln = embedding_features(vec.numpy(), known.numpy())
        targets = set(d["perturbation"]) - {params.control}
        report["gremln_features"] = {"model": g_rep["gremln_model"], "genes_covered": int(known.sum()),
                                     "targets_covered": sorted(targets & set(g_rep["set_genes_initialised"]))}
    pert = d["perturbation"]
    report.update(universe=len(d["genes"]), measured_genes=int(d["measured"].sum()),
                  targets_unmeasured=d["targets_unmeasured"], genes_not_in_multigraph=len(d["genes_not_in_multigraph"]),
                  graph_edges_in_universe=kept, random_walk_features=rwr_rep, attend=params.attend)
    return {**d, "graphs": graphs, "rwr": rwr, "rwr_names": rwr_names, "gremln": gremln, "report": report,
            "targets": sorted(set(pert) - {params.control}), "ctrl_rows": np.flatnonzero(pert == params.control),
            "pos": {g: i for i, g in enumerate(d["genes"])}}


def deltas(ctx: dict, perts: list[str], ctrl_rows: np.ndarray) -> np.ndarray:
    """Mean change of each perturbation's cells against the mean of the control rows -> float
    [len(perts), N] (log units; 0 at unmeasured genes).

    Parameters
    ----------
    ctx : dict
        :func:`load_context` dict (``expr`` float32 [C, N] log1p(counts per 1e4), ``perturbation`` [C], ...).
    perts : list of str
        Perturbation labels [P].
    ctrl_rows : np.ndarray
        int, rows of ``ctx["expr"]`` of the reference control cells.

    Returns
    -------
    np.ndarray
        float32 [P, N], mean log1p(counts per 1e4) of the perturbation's cells minus that of the controls.
    """
    expr, pert = ctx["expr"], ctx["perturbation"]
    mu0 = expr[ctrl_rows].mean(0)
    return np.stack([expr[pert == p].mean(0) - mu0 for p in perts]).astype(np.float32)


def scores(ctx: dict, perts: list[str], ctrl_rows: np.ndarray) -> np.ndarray:
    """Debiased perturbation score of each perturbation against the control rows -> float [len(perts)].

    Parameters
    ----------
    ctx : dict
        :func:`load_context` dict (``expr`` float32 [C, N] log1p(counts per 1e4), ``perturbation`` [C], ...).
    perts : list of str
        Perturbation labels [P].
    ctrl_rows : np.ndarray
        int, rows of ``ctx["expr"]`` of the reference control cells.

    Returns
    -------
    np.ndarray
        float [P], :func:`cellgraph.tl.perturb_eval.debiased_score` over the measured genes (squared log units).
    """
    m = ctx["measured"]
    x0 = ctx["expr"][ctrl_rows][:, m]
    return np.array([pe.debiased_score(ctx["expr"][ctx["perturbation"] == p][:, m], x0) for p in perts])


def training_weights(ctx: dict, perts: list[str], ctrl_rows: np.ndarray, seed: int) -> np.ndarray:
    """Loss weight of each training target: its split-half reliability on training cells against the training
    controls, clipped at 0 -> float [len(perts)]; uniform when every weight is 0. Targets whose training
    delta is sampling noise then neither steer the fit nor the offset.

    Parameters
    ----------
    ctx : dict
        :func:`load_context` dict (``expr`` float32 [C, N] log1p(counts per 1e4), ``perturbation`` [C], ...).
    perts : list of str
        Training targets [P].
    ctrl_rows : np.ndarray
        int, rows of ``ctx["expr"]`` of the training control cells.
    seed : int
        Seed of the random halvings (:func:`split_half_rs`).

    Returns
    -------
    np.ndarray
        float [P], weights >= 0 (NaN reliabilities count as 0); all ones when they sum to 0.
    """
    w = split_half_rs(ctx, perts, ctrl_rows, seed)
    w = np.clip(np.nan_to_num(w), 0, None)
    return w if w.sum() > 0 else np.ones(len(perts))


def own_gene_changes(ctx: dict, perts: list[str], y: np.ndarray) -> list[float]:
    """Own-gene change (log units) of each measured target among ``perts`` from deltas y [P, N].

    Parameters
    ----------
    ctx : dict
        :func:`load_context` dict (``pos`` gene -> column, ``measured`` bool [N]).
    perts : list of str
        Targets [P], the rows of ``y``.
    y : np.ndarray
        float [P, N], deltas (log units).

    Returns
    -------
    list of float
        ``y[j, column of perts[j]]`` for every target whose gene is measured, in the order of ``perts``.
    """
    return [float(y[j, ctx["pos"][p]]) for j, p in enumerate(perts) if ctx["measured"][ctx["pos"][p]]]


def split_half_rs(ctx: dict, perts: list[str], ctrl_rows: np.ndarray, seed: int) -> np.ndarray:
    """Split-half reliability of each perturbation's delta against the control rows -> float [len(perts)]
    (:func:`cellgraph.tl.perturb_eval.split_half_reliability` over the measured genes).

    Parameters
    ----------
    ctx : dict
        :func:`load_context` dict (``expr`` float32 [C, N] log1p(counts per 1e4), ``perturbation`` [C], ...).
    perts : list of str
        Perturbation labels [P].
    ctrl_rows : np.ndarray
        int, rows of ``ctx["expr"]`` of the reference control cells.
    seed : int
        Seed of the random halvings.

    Returns
    -------
    np.ndarray
        float [P], mean split-half Pearson r; NaN where a side has fewer than 2 cells.
    """
    m, expr, pert = ctx["measured"], ctx["expr"], ctx["perturbation"]
    x0 = expr[ctrl_rows][:, m]
    return np.array([pe.split_half_reliability(expr[pert == p][:, m], x0, seed=seed) for p in perts])


def reliability_table(ctx: dict, eval_ctrl: np.ndarray, seed: int, threshold: float) -> pd.DataFrame:
    """Per target: n_cells, split-half r against the evaluation controls, noise ceiling, reliable flag.

    Parameters
    ----------
    ctx : dict
        :func:`load_context` dict (``expr`` float32 [C, N] log1p(counts per 1e4), ``perturbation`` [C], ...).
    eval_ctrl : np.ndarray
        int, rows of ``ctx["expr"]`` of the evaluation control cells.
    seed : int
        Seed of the random halvings (:func:`split_half_rs`).
    threshold : float
        Split-half r from which a target is reliable (``--reliable-threshold``).

    Returns
    -------
    pd.DataFrame
        Indexed by ``perturbation`` (every target of ``ctx["targets"]``); columns ``n_cells`` (all its cells),
        ``split_half_r``, ``noise_ceiling`` (:func:`cellgraph.tl.perturb_eval.noise_ceiling`), ``reliable``
        (bool: finite r >= ``threshold``).
    """
    r = split_half_rs(ctx, ctx["targets"], eval_ctrl, seed)
    n = [int((ctx["perturbation"] == p).sum()) for p in ctx["targets"]]
    return pd.DataFrame({"perturbation": ctx["targets"], "n_cells": n, "split_half_r": r,
                         "noise_ceiling": [pe.noise_ceiling(x) for x in r],
                         "reliable": np.isfinite(r) & (r >= threshold)}).set_index("perturbation")


# --------------------------------------------------------------------------------------------------
# Model training
# --------------------------------------------------------------------------------------------------


def fold_gene_features(ctx: dict, train_cells: np.ndarray, n_pca: int, seed: int) -> np.ndarray:
    """Fixed gene features of one fold -> float32 [N, F]: random-walk features, GREmLN features, then the
    ``n_pca`` + 1 expression-loading columns of the training cells
    (:func:`cellgraph.graphs.gene_features.expression_loadings`, seeded by ``seed``; always the last columns).

    ``train_cells`` are row positions of ``ctx["expr"]``; no other cell is read.

    Parameters
    ----------
    ctx : dict
        :func:`load_context` dict (``expr``, ``measured``, ``rwr`` [N, F_rwr], ``gremln`` [N, F_g]).
    train_cells : np.ndarray
        int, rows of ``ctx["expr"]`` of the fold's training cells (controls and training targets).
    n_pca : int
        Number of PCA components (``--n-pca``).
    seed : int
        Seed of the PCA.

    Returns
    -------
    np.ndarray
        float32 [N, F_rwr + F_g + n_pca + 1].
    """
    load = expression_loadings(ctx["expr"][train_cells][:, ctx["measured"]], ctx["measured"], n_pca, seed=seed)
    return np.concatenate([ctx["rwr"], ctx["gremln"], load], 1).astype(np.float32)  # [N, F]


def train_model(params: ForwardParams, ctx: dict, perts: list[str], y: np.ndarray, score: np.ndarray,
                weight: np.ndarray, feats: np.ndarray, epochs: int, seed: int, on_epoch_end=None, diagnostics=None):
    """Fit the model on targets ``perts`` with deltas y [P, N] (log units), scores [P] and loss weights [P]
    for ``epochs`` full-batch steps -> (model, gene_sd [N], (score mean, score sd)). The readout offsets are
    the weighted mean training change and, at the target's own gene, the mean own-gene change of the
    measured training targets; ``epochs`` 0 returns the model that predicts exactly these (the
    ``weighted_mean_change_own_gene`` baseline).

    Parameters
    ----------
    params : run options (``label_scale``, ``preset``, ``head``, ``graph_reg``, ``dropout``, ``score_weight``,
        ``batch_size``, ``lr``, ``weight_decay`` are read here).
    ctx : :func:`load_context` dict (its ``report`` gets ``graph_reg_dropped``).
    perts : training targets [P]; y : float [P, N] their deltas; score : float [P]; weight : float [P].
    feats : float32 [N, F] gene features (:func:`fold_gene_features`).
    epochs : full-batch training epochs (0 = the offsets alone).
    seed : seeds the initialisation and the batch order.
    on_epoch_end, diagnostics : as for :func:`cellgraph.tl.perturb.fit`.

    Returns
    -------
    tuple
        (model in eval mode, ``gene_sd`` float32 [N] label scale per gene (1 at unmeasured genes), (score mean,
        score sd) of the training scores).
    """
    measured = ctx["measured"]
    gene_sd = np.ones(len(measured), np.float32)
    sd = y[:, measured].std(0) if params.label_scale == "gene" else np.full(measured.sum(), y[:, measured].std())
    gene_sd[measured] = np.maximum(sd, 1e-3)
    yz = y / gene_sd
    own = own_gene_changes(ctx, perts, y)
    s_mu, s_sd = float(score.mean()), float(max(score.std(), 1e-6))
    torch.manual_seed(seed)
    model, _ = pt.make_model("equivariant", len(measured), ctx["graphs"], "forward", ctx["report"],
                             preset=params.preset, head=params.head, graph_reg=params.graph_reg,
                             n_features=feats.shape[1], gene_identity=False, set_gate=True,
                             dropout=params.dropout)
    model.encoder.set_features(torch.from_numpy(feats))
    with torch.no_grad():
        offset = np.zeros(len(measured))
        offset[measured] = pe.weighted_mean_change(y[:, measured], weight) / gene_sd[measured]  # [N] z-units
        model.expression_offset.copy_(torch.from_numpy(np.where(measured, offset, 0.0).astype(np.float32)))
        if own:
            own_z = (np.mean(own) / gene_sd - offset) * measured  # replaces the offset at the own gene
            model.own_offset.copy_(torch.from_numpy(own_z.astype(np.float32)))
    if epochs > 0:
        samples = pt.Samples([np.array([ctx["pos"][p]]) for p in perts],
                             {"expression": (yz.astype(np.float32), np.broadcast_to(measured, yz.shape).copy()),
                              "fitness": (((score - s_mu) / s_sd).astype(np.float32), np.ones(len(perts), bool))},
                             weights=weight)
        pt.fit(model, samples, {"expression": 1.0, "fitness": params.score_weight}, max_epochs=epochs,
               batch_size=params.batch_size, lr=params.lr, seed=seed, diagnostics=diagnostics, on_epoch_end=on_epoch_end,
               weight_decay=params.weight_decay)
    elif diagnostics is not None:  # untrained (early stopping chose 0 epochs): its attention is still reported
        g_rows, h_rows = cgt.attention_diagnostics(model.encoder, diagnostics["graphs"], seed=seed)
        tag = {k: v for k, v in diagnostics.items() if k not in ("graphs", "graph_rows", "head_rows", "every")}
        diagnostics["graph_rows"].extend({**tag, "epoch": 0, **r} for r in g_rows)
        diagnostics["head_rows"].extend({**tag, "epoch": 0, **r} for r in h_rows)
    model.eval()
    return model, gene_sd, (s_mu, s_sd)


def predict_deltas(ctx: dict, model, gene_sd: np.ndarray, score_scale, perts: list[str]):
    """-> (predicted deltas [P, N] in log units, predicted scores [P]).

    Parameters
    ----------
    ctx : dict
        :func:`load_context` dict (``pos`` gene -> column).
    model : torch.nn.Module
        Model of :func:`train_model`.
    gene_sd : np.ndarray
        float32 [N], label scale per gene (:func:`train_model`).
    score_scale : tuple of float
        (score mean, score sd) of :func:`train_model`.
    perts : list of str
        Targets [P] to predict (each set is {target}).

    Returns
    -------
    tuple of np.ndarray
        (float [P, N] predicted deltas, log units; float [P] predicted debiased scores).
    """
    out = pt.predict(model, [np.array([ctx["pos"][p]]) for p in perts])
    return out["expression"] * gene_sd, out["fitness"] * score_scale[1] + score_scale[0]


def choose_epochs(params: ForwardParams, ctx: dict, train_perts: list[str], train_ctrl: np.ndarray, feats: np.ndarray,
                  seed: int) -> tuple[int, list[dict]]:
    """Early stopping on an inner leave-perturbation-out split -> (best epoch count, curve rows).

    A share ``params.inner_fraction`` (at least 2) of the training targets is held out; the training controls are
    halved again so the inner held-out deltas have their own reference. Epoch 0 (the offsets alone) is a
    candidate. The inner score is the mean inner Pearson-delta weighted by the inner targets' training
    reliability; the epoch count is the smallest within one standard error of the best (the one-SE rule),
    so a curve that is flat within its noise keeps the offsets alone
    (:func:`cellgraph.tl.perturb_eval.one_standard_error_choice`). The inner model trains for
    ``params.max_epochs`` and is scored every ``params.eval_every`` epochs.

    Parameters
    ----------
    params : ForwardParams
        Run options (``inner_fraction``, ``max_epochs``, ``eval_every`` and those of :func:`train_model`).
    ctx : dict
        :func:`load_context` dict.
    train_perts : list of str
        The fold's training targets.
    train_ctrl : np.ndarray
        int, rows of ``ctx["expr"]`` of the training control cells.
    feats : np.ndarray
        float32 [N, F], the fold's gene features (:func:`fold_gene_features`).
    seed : int
        Seeds the inner split, the control halves and the inner model.

    Returns
    -------
    tuple
        (chosen epoch count int, curve: list of dicts ``epoch``, ``inner_pearson_delta``, ``se``).
    """
    rng = np.random.default_rng(seed + 7919)
    n_in = max(2, int(round(params.inner_fraction * len(train_perts))))
    inner = sorted(rng.choice(train_perts, n_in, replace=False).tolist())
    fit_perts = [p for p in train_perts if p not in inner]
    c_fit, c_val = pe.split_controls(len(train_ctrl), seed + 1)
    c_fit, c_val = train_ctrl[c_fit], train_ctrl[c_val]
    y_fit = deltas(ctx, fit_perts, c_fit)
    y_val = deltas(ctx, inner, c_val)[:, ctx["measured"]]
    w_fit = training_weights(ctx, fit_perts, c_fit, seed)
    w_val = training_weights(ctx, inner, c_val, seed + 1)
    s_fit = scores(ctx, fit_perts, c_fit)
    curve = []

    def score_epoch(epoch, model):
        """``on_epoch_end`` callback: at epoch 0, every ``params.eval_every``-th epoch and the last, append the
        reliability-weighted mean inner Pearson-delta (measured genes) and its standard error to ``curve``.
        """
        if epoch % params.eval_every and epoch != params.max_epochs and epoch != 0:
            return
        pred, _ = predict_deltas(ctx, model, gene_sd, scale, inner)
        r = np.nan_to_num([pe.pearson(a[ctx["measured"]], b) for a, b in zip(pred, y_val)])
        mean = float(w_val @ r / w_val.sum())
        se = float(np.sqrt((w_val ** 2) @ (r - mean) ** 2) / w_val.sum())
        curve.append({"epoch": epoch, "inner_pearson_delta": mean, "se": se})

    model, gene_sd, scale = train_model(params, ctx, fit_perts, y_fit, s_fit, w_fit, feats, 0, seed)
    score_epoch(0, model)
    train_model(params, ctx, fit_perts, y_fit, s_fit, w_fit, feats, params.max_epochs, seed, on_epoch_end=score_epoch)
    best = pe.one_standard_error_choice(curve, "inner_pearson_delta", "se")
    return int(best["epoch"]), curve


# --------------------------------------------------------------------------------------------------
# One seed
# --------------------------------------------------------------------------------------------------


def baseline_predictions(ctx: dict, train_perts: list[str], held: list[str], y_train: np.ndarray,
                         weight: np.ndarray, feats: np.ndarray, n_pca: int, ridge: float) -> dict:
    """Every baseline's predicted deltas for the held-out targets -> {method: [len(held), M]} (measured genes).

    ``y_train`` float [P, N] training deltas (log units), ``weight`` [P] their loss weights, ``feats`` float32
    [N, F] gene features whose columns ``-(n_pca + 1):-1`` are the expression loadings
    (:func:`fold_gene_features`), ``ridge`` the lambda of the linear baselines (:func:`cellgraph.tl.perturb_eval.linear_baseline`;
    Ahlmann-Eltze et al. 2025). Methods: :data:`BASELINES`.

    Parameters
    ----------
    ctx : dict
        :func:`load_context` dict (``measured``, ``pos``, ``genes``, ``rwr``).
    train_perts : list of str
        Training targets [P], the rows of ``y_train``.
    held : list of str
        Held-out targets.
    y_train : np.ndarray
        float [P, N], training deltas (log units).
    weight : np.ndarray
        float [P], loss weights of the training targets (:func:`training_weights`).
    feats : np.ndarray
        float32 [N, F], gene features (:func:`fold_gene_features`).
    n_pca : int
        Number of expression-loading columns.
    ridge : float
        Ridge lambda of the linear baselines.

    Returns
    -------
    dict
        {method: float [len(held), M]} predicted deltas over the M measured genes (log units).
    """
    m, pos = ctx["measured"], ctx["pos"]
    yt = y_train[:, m]
    mean = yt.mean(0)
    wmean = pe.weighted_mean_change(yt, weight)
    mpos = {g: i for i, g in enumerate(np.array(ctx["genes"])[m])}
    own = own_gene_changes(ctx, train_perts, y_train)
    gene_emb = feats[m][:, -(n_pca + 1):-1]  # expression loadings of the measured genes [M, K]

    def pca_row(p):
        """Target ``p``'s PCA gene embedding: its ``n_pca`` expression-loading columns of ``feats`` (zero when
        ``p`` is not measured).
        """
        return feats[pos[p], -(n_pca + 1):-1]

    rwr = ctx["rwr"]
    return {
        "no_change": np.zeros((len(held), m.sum())),
        "mean_change": np.tile(mean, (len(held), 1)),
        "mean_change_own_gene": np.stack([pe.own_gene_adjusted(mean, own, mpos.get(p)) for p in held]),
        "weighted_mean_change": np.tile(wmean, (len(held), 1)),
        "weighted_mean_change_own_gene": np.stack([pe.own_gene_adjusted(wmean, own, mpos.get(p)) for p in held]),
        "linear_pca": pe.linear_baseline(yt, gene_emb, np.stack([pca_row(p) for p in train_perts]),
                                         np.stack([pca_row(p) for p in held]), ridge),
        "linear_graph": pe.linear_baseline(yt, gene_emb, rwr[[pos[p] for p in train_perts]],
                                           rwr[[pos[p] for p in held]], ridge),
    }


def run_fold(params: ForwardParams, ctx: dict, seed: int, k: int, held: list[str], train_ctrl, eval_ctrl, rel,
             diag) -> dict:
    """Train, predict and score one leave-perturbation-out fold -> dict of metric rows and predictions.

    Parameters
    ----------
    params : run options; ctx : :func:`load_context` dict.
    seed, k : the seed and fold number (the fold's random streams are seeded by ``seed * 100 + k``).
    held : held-out targets; train_ctrl, eval_ctrl : control rows of training and of evaluation.
    rel : :func:`reliability_table` of the seed; diag : attention-diagnostics dict or None
        (:func:`cellgraph.tl.perturb.fit`).

    Returns
    -------
    dict
        ``rows`` (metric rows per perturbation and method), ``score_rows``, ``methods`` ({method: float
        [len(held), M]} predicted deltas), ``observed`` float [len(held), M], ``model``, ``curve`` (early
        stopping rows) and ``info``.
    """
    pert, m = ctx["perturbation"], ctx["measured"]
    train_perts = [p for p in ctx["targets"] if p not in held]
    train_cells = np.concatenate([train_ctrl, np.flatnonzero(np.isin(pert, train_perts))])
    assert not np.isin(pert[train_cells], held).any()  # held-out cells never reach training
    feats = fold_gene_features(ctx, train_cells, params.n_pca, seed)
    epochs, curve = choose_epochs(params, ctx, train_perts, train_ctrl, feats, seed * 100 + k)
    y_train = deltas(ctx, train_perts, train_ctrl)
    weight = training_weights(ctx, train_perts, train_ctrl, seed * 100 + k)
    model, gene_sd, scale = train_model(params, ctx, train_perts, y_train, scores(ctx, train_perts, train_ctrl), weight,
                                        feats, epochs, seed * 100 + k, diagnostics=diag)
    pred, pred_score = predict_deltas(ctx, model, gene_sd, scale, held)
    methods = {MODEL: pred[:, m], **baseline_predictions(ctx, train_perts, held, y_train, weight, feats,
                                                    n_pca=params.n_pca, ridge=params.ridge)}
    obs = deltas(ctx, held, eval_ctrl)[:, m]
    x0 = ctx["expr"][eval_ctrl][:, m]
    rows = []
    mnames = np.array(ctx["genes"])[m]
    for j, p in enumerate(held):
        top = pe.top_de_genes(ctx["expr"][pert == p][:, m], x0)
        own = np.flatnonzero(mnames == p)
        for method, yhat in methods.items():
            rows.append({"seed": seed, "fold": k, "perturbation": p, "method": method, "epochs": epochs,
                         "pearson_delta": pe.pearson(yhat[j], obs[j]),
                         "pearson_delta_top20": pe.pearson(yhat[j][top], obs[j][top]),
                         "mse": float(np.mean((yhat[j] - obs[j]) ** 2)),
                         "own_gene_predicted": float(yhat[j][own[0]]) if own.size else np.nan,
                         "own_gene_observed": float(obs[j][own[0]]) if own.size else np.nan,
                         **rel.loc[p].to_dict()})
    obs_score = scores(ctx, held, eval_ctrl)
    score_rows = [{"seed": seed, "fold": k, "perturbation": p, "method": meth, "predicted": float(v),
                   "observed": float(obs_score[j])}
                  for j, p in enumerate(held)
                  for meth, v in ((MODEL, pred_score[j]), ("train_mean_score", scale[0]))]
    return {"rows": rows, "score_rows": score_rows, "methods": methods, "observed": obs, "model": model,
            "curve": [{"seed": seed, "fold": k, **c} for c in curve],
            "info": {"seed": seed, "fold": k, "heldout": held, "epochs": epochs, "train_targets": len(train_perts)}}


# --------------------------------------------------------------------------------------------------
# Whole run
# --------------------------------------------------------------------------------------------------


def run_forward(params: ForwardParams, *, adata_path, multigraph_path, out_dir: Path, gremln_model=None) -> None:
    """``cellgraph perturb --task forward``: leave-perturbation-out prediction on Papalexi (module docstring).

    Reads ``adata_path`` (ECCITE-seq h5ad), ``multigraph_path`` and optionally ``gremln_model``
    (:func:`load_context`); for every seed of ``params.seeds`` and every fold, trains the model with early
    stopping and scores it against the baselines (:func:`run_fold`). Writes to ``out_dir`` (:func:`write_outputs`):
    ``metrics.tsv``, ``summary.tsv``, ``comparisons.tsv``, ``own_gene.tsv``, ``early_stopping.tsv``,
    ``score_predictions.tsv``, ``score_summary.tsv``, ``predictions.h5ad``, ``model.pt`` (first fold of the
    first seed), ``attention_diagnostics.tsv``, ``attention_heads.tsv`` and ``report.json``.

    Parameters
    ----------
    params : ForwardParams
        Run options.
    adata_path, multigraph_path, gremln_model : str or os.PathLike (``gremln_model`` optional)
        Inputs of :func:`load_context` (``--adata``, ``--multigraph``, ``--gremln-model``).
    out_dir : pathlib.Path
        Existing output folder.

    Raises
    ------
    InputError
        If the h5ad or the multigraph is missing or malformed, or the GREmLN model cannot be read.
    """
    t0 = time.time()
    ctx = load_context(params, adata_path=adata_path, multigraph_path=multigraph_path, gremln_model=gremln_model)
    rows, score_rows, curves, infos, pred_rows = [], [], [], [], []
    diag_rows: dict = {"graph_rows": [], "head_rows": []}
    state = None
    for seed in params.seeds:
        ts = time.time()
        train_c, eval_c = pe.split_controls(len(ctx["ctrl_rows"]), seed)
        train_ctrl, eval_ctrl = ctx["ctrl_rows"][train_c], ctx["ctrl_rows"][eval_c]
        rel = reliability_table(ctx, eval_ctrl, seed, params.reliable_threshold)
        folds = pt.leave_perturbation_out_folds(ctx["perturbation"], params.control, params.n_folds, seed)
        for k, (_, held) in enumerate(folds):
            diag = ({"graphs": ctx["graphs"], **diag_rows, "every": params.diagnostics_every, "model": MODEL, "fold": k}
                    if seed == params.seeds[0] else None)
            res = run_fold(params, ctx, seed, k, held, train_ctrl, eval_ctrl, rel, diag)
            rows += res["rows"]
            score_rows += res["score_rows"]
            curves += res["curve"]
            infos.append(res["info"])
            pred_rows.append((seed, k, held, res["methods"], res["observed"], rel))
            state = state or {"config": cgt.config_dict(res["model"].cfg), "state_dict": res["model"].state_dict()}
            log.info("seed %d fold %d: held out %s, %d epochs", seed, k, held, res["info"]["epochs"])
        log.info("seed %d: %.1f s", seed, time.time() - ts)
    write_outputs(out_dir, ctx, params, pd.DataFrame(rows), pd.DataFrame(score_rows), pd.DataFrame(curves), pred_rows,
                  state, diag_rows, {"folds": infos, "seconds": round(time.time() - t0, 1)})


def write_outputs(out: Path, ctx: dict, params: ForwardParams, metrics: pd.DataFrame, score_df: pd.DataFrame,
                  curves: pd.DataFrame, pred_rows: list, state: dict, diag_rows: dict, extra: dict) -> None:
    """All files of the module docstring, in ``out``.

    ``metrics`` / ``score_df`` / ``curves`` are the rows of :func:`run_fold` of every seed and fold,
    ``pred_rows`` the per-fold predictions (:func:`write_predictions`), ``state`` the config and state dict of
    the first fold's model (``model.pt``), ``diag_rows`` the attention diagnostics and ``extra`` entries added
    to ``report.json``; the bootstrap of ``summary.tsv`` is seeded by ``params.seeds[0]``.

    Parameters
    ----------
    out : pathlib.Path
        Existing output folder.
    ctx : dict
        :func:`load_context` dict (``graphs``, ``genes``, ``measured``, ``report``).
    params : ForwardParams
        Run options (``seeds``).
    metrics, score_df, curves : pd.DataFrame
        Metric rows, score rows and early-stopping curve rows of :func:`run_fold`, all seeds and folds.
    pred_rows : list
        (seed, fold, held, methods, observed, reliability table) per fold (:func:`write_predictions`).
    state : dict
        ``config`` and ``state_dict`` of the first fold's model.
    diag_rows : dict
        ``graph_rows`` and ``head_rows`` of the attention diagnostics.
    extra : dict
        Entries added to ``report.json``.
    """
    metrics["subset"] = np.where(metrics["reliable"], "reliable", "unreliable")
    both = pd.concat([metrics.assign(subset="all"), metrics])
    summary = pe.summarize(both, ["subset", "method"], seed=params.seeds[0])
    comp = pe.paired_comparison(both, MODEL, BASELINES[1:])
    own = metrics[metrics["own_gene_observed"].notna()][["seed", "perturbation", "method", "own_gene_predicted",
                                                          "own_gene_observed"]]
    own = own.assign(sign_correct=np.sign(own["own_gene_predicted"]) == np.sign(own["own_gene_observed"]))
    score_summary = pd.DataFrame([
        {"method": meth, "n": len(g), "pearson": pe.pearson(g["predicted"], g["observed"]) if meth == MODEL else np.nan,
         "mse": float(((g["predicted"] - g["observed"]) ** 2).mean())}
        for meth, g in score_df.groupby("method", sort=False)])
    write_tsv(metrics, out / "metrics.tsv")
    write_tsv(summary, out / "summary.tsv", "%.4g")
    write_tsv(comp, out / "comparisons.tsv", "%.4g")
    write_tsv(own, out / "own_gene.tsv", "%.4g")
    write_tsv(curves, out / "early_stopping.tsv", "%.4g")
    write_tsv(score_df, out / "score_predictions.tsv")
    write_tsv(score_summary, out / "score_summary.tsv", "%.4g")
    write_predictions(out / "predictions.h5ad", ctx, pred_rows)
    with atomic_path(out / "model.pt") as tmp:
        torch.save({"kind": "equivariant", **state, "graphs": ctx["graphs"], "genes": ctx["genes"]}, tmp)
    pt.write_diagnostics(out, diag_rows)
    write_json(out / "report.json", {**ctx["report"], **extra, "seeds": list(params.seeds)})
    log.info("forward prediction:\n%s\ncomparisons:\n%s", summary[["subset", "method", "n_perturbations",
             "pearson_delta_mean", "pearson_delta_ci_low", "pearson_delta_ci_high", "mse_mean",
             "noise_ceiling_mean"]].to_string(index=False), comp.to_string(index=False))


def write_predictions(path: Path, ctx: dict, pred_rows: list) -> None:
    """predictions.h5ad: one obs row per (seed, held-out perturbation); layers: observed and each method.

    Parameters
    ----------
    path : pathlib.Path
        Output h5ad, written atomically.
    ctx : dict
        :func:`load_context` dict (``genes``, ``measured``: var = the M measured genes).
    pred_rows : list
        Per fold (seed, fold, held [H], {method: float [H, M]}, observed float [H, M], :func:`reliability_table`);
        deltas in log1p(counts per 1e4) units.
    """
    import anndata as ad

    obs, layers = [], {}
    for seed, k, held, methods, observed, rel in pred_rows:
        for j, p in enumerate(held):
            obs.append({"perturbation": p, "seed": seed, "fold": k, **rel.loc[p].to_dict()})
        layers.setdefault("observed", []).append(observed)
        for meth, v in methods.items():
            layers.setdefault(meth, []).append(v)
    layers = {k: np.concatenate(v).astype(np.float32) for k, v in layers.items()}
    obs = pd.DataFrame(obs)
    obs.index = [f"{r.perturbation}_seed{r.seed}" for r in obs.itertuples()]
    var = pd.DataFrame(index=np.array(ctx["genes"])[ctx["measured"]])
    adata = ad.AnnData(X=layers["observed"].copy(), obs=obs, var=var, layers=layers)
    adata.uns["description"] = ("Held-out mean expression changes (log1p of counts per 1e4) of each perturbation "
                                "against evaluation controls (layers['observed']) and every method's prediction "
                                "(one layer per method)")
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
