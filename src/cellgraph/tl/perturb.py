r"""Perturbation prediction with the cell graph transformers: forward, yeast, reverse, figures.

``cellgraph perturb --task forward`` (Papalexi et al. 2021 ECCITE-seq, THP-1 CRISPR knockouts)
    Leave-perturbation-out prediction of mean expression changes with independent evaluation controls, noise
    ceilings, reliable/unreliable subsets, seven baselines and paired tests: :mod:`cellgraph.tl.perturb_forward`.

``cellgraph perturb --task yeast`` (Costanzo et al. 2016 pairs and single-mutant fitness table)
    Double-mutant fitness and epsilon on pair folds and gene-disjoint folds against mean, multiplicative and
    additive baselines: :mod:`cellgraph.tl.perturb_yeast`.

``cellgraph perturb --task reverse`` (GREmLN paper section 4.5, Table 3)
    The ``--n-top-perturbations`` targets with the largest centroid distance from the control centroid in PCA
    space (``scanpy.pp.pca``, 20 components of the log-normalised expression); cells of those targets; 3
    stratified 80/20 splits; classifiers: lasso logistic regression (L1: :func:`l1_logistic_regression`) on
    expression, and a logistic-regression probe on frozen GREmLN / vanilla CLS embeddings (``--gremln-model``,
    ``--vanilla-model``, when given: cells are tokenised with the model's PBMC vocabulary, so only the genes
    present in that vocabulary are tokens; the cells' graph is the ``--grn-cell-type`` ARACNe network of
    ``--grn-networks``), and each model fine-tuned with a linear classification head on its CLS state
    (``--finetune-epochs`` of cross-entropy, all weights trained; 0 skips it). Accuracy and macro-F1, mean and
    sd over splits.

Attention diagnostics (forward and yeast): after every ``--diagnostics-every``-th epoch and the last, per
(graph, layer, head) of the shared encoder, recall@degree, precision@{8, 32, 128} and the attention mass on
true edges, and per head the attention entropy and effective rank
(:func:`cellgraph.models.cell_graph_transformer.attention_diagnostics`), written to
``attention_diagnostics.tsv`` and ``attention_heads.tsv``.

``cellgraph perturb --task figures`` reads the three results folders and writes figures and tables.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..io import atomic_path, require_file, save_figure, write_json, write_tsv
from ..models import cell_graph_transformer as cgt
from ..training.pretrain import quiet_lightning

log = logging.getLogger(__name__)

TASKS = ("forward", "yeast", "reverse", "figures")


# --------------------------------------------------------------------------------------------------
# Samples with pointer arrays
# --------------------------------------------------------------------------------------------------


class Samples(torch.utils.data.Dataset):
    """Perturbation samples: sets S as pointer arrays plus labels.

    sets: list of int arrays (gene indices); labels: task -> (y ndarray [n, ...], m bool ndarray [n, ...]);
    weights: optional float [n] loss weight per sample (``sample_weight`` of the batch); offsets: optional
    task -> float [n], added to that task's prediction of each sample (``o_<task>``; :func:`per_sample`), e.g.
    a baseline the model then corrects.
    Items are sample indices; :meth:`collate` builds the batch dict of
    :mod:`cellgraph.models.cell_graph_transformer` (``pert_ptr``, ``pert_idx``, ``pert_type`` all deletion,
    ``y_<task>``, ``m_<task>``).
    """

    def __init__(self, sets: list, labels: dict, weights: np.ndarray | None = None, offsets: dict | None = None):
        self.sets = [np.asarray(s, dtype=np.int64) for s in sets]
        self.labels = labels
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float32)  # [n] loss weights
        self.offsets = {t: np.asarray(o, dtype=np.float32) for t, o in (offsets or {}).items()}  # task -> [n]

    def __len__(self):
        return len(self.sets)

    def __getitem__(self, i):
        return i

    def collate(self, idx) -> dict:
        """Batch of samples ``idx``: identical sets are encoded once (``pert_ptr`` over the U distinct sets,
        ``set_of_sample`` Long [B] maps each sample to its set); labels stay per sample. Since f(G, S) depends
        on S only, the loss on ``pred[set_of_sample]`` equals the per-sample loss exactly."""
        idx = np.asarray(idx)
        keys = [self.sets[i].tobytes() for i in idx]
        uniq: dict[bytes, int] = {}
        set_of = np.array([uniq.setdefault(k, len(uniq)) for k in keys], dtype=np.int64)
        first = {}
        for j, k in enumerate(keys):
            first.setdefault(k, idx[j])
        usets = [self.sets[first[k]] for k in uniq]
        sizes = np.array([len(s) for s in usets], dtype=np.int64)
        ptr = np.concatenate([[0], np.cumsum(sizes)])
        flat = np.concatenate(usets) if sizes.sum() else np.zeros(0, np.int64)
        batch = {"pert_ptr": torch.from_numpy(ptr), "pert_idx": torch.from_numpy(flat.astype(np.int64)),
                 "pert_type": torch.zeros(len(flat), dtype=torch.long), "set_of_sample": torch.from_numpy(set_of)}
        if self.weights is not None:
            batch["sample_weight"] = torch.from_numpy(self.weights[idx])
        for t, o in self.offsets.items():
            batch[f"o_{t}"] = torch.from_numpy(np.ascontiguousarray(o[idx]))
        for t, (y, m) in self.labels.items():
            batch[f"y_{t}"] = torch.from_numpy(np.ascontiguousarray(y[idx], dtype=np.float32))
            batch[f"m_{t}"] = torch.from_numpy(np.ascontiguousarray(m[idx], dtype=bool))
        return batch


def per_sample(out: dict, batch: dict) -> dict:
    """Predictions of the distinct sets -> predictions per sample (``out[t][set_of_sample]``, plus the sample's
    offset ``o_<t>`` where the batch has one).

    Parameters
    ----------
    out : dict
        task -> model output over the U distinct sets, tensor [U, ...]; ``h_pert`` is dropped.
    batch : dict
        :meth:`Samples.collate` batch (``set_of_sample`` Long [B], optional ``o_<task>`` float [B]).

    Returns
    -------
    dict
        task -> tensor [B, ...], one row per sample.
    """
    s = batch["set_of_sample"]
    return {k: v[s] + batch[f"o_{k}"] if f"o_{k}" in batch else v[s] for k, v in out.items() if k != "h_pert"}


def _fit_on_cpu(module, loader, max_epochs: int) -> None:
    """Lightning fit on the CPU, deterministic, no logger, checkpoints or progress bar (small models)."""
    import lightning.pytorch as pl

    with quiet_lightning():
        trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             deterministic=True)
        trainer.fit(module, loader)


def fit(model, samples: Samples, weights: dict, *, max_epochs: int, batch_size: int, lr: float, seed: int,
        diagnostics: dict | None = None, on_epoch_end=None, weight_decay: float = 0.01):
    """Train with Lightning (AdamW, loss = sparse multi-task loss + graph regularisation); model left in eval mode.

    Parameters
    ----------
    model, samples : torch.nn.Module, Samples
        Cell graph transformer (:func:`make_model`), trained in place; training samples (shuffled batches).
    weights : dict
        task -> loss weight (:func:`cellgraph.models.cell_graph_transformer.multitask_loss`).
    max_epochs, batch_size, lr, seed, weight_decay : int, int, float, int, float
        Epochs, samples per batch, AdamW learning rate, seed (Lightning, batch order), AdamW weight decay.
    diagnostics : dict or None
        ``{"graphs": (as for SharedEncoder.set_graphs), "graph_rows": [], "head_rows": [], "every": E, **columns}``:
        after every E-th epoch (default 1) and the last, the encoder's attention diagnostics (eval mode;
        :func:`cellgraph.models.cell_graph_transformer.attention_diagnostics`) are appended to the two lists with
        ``epoch`` and the columns (no per-cell input: the maps hold for any data; epoch end is the validation point).
    on_epoch_end : callable or None
        ``f(epoch (1-based), model)`` after every epoch, model in eval mode (early stopping reads its score here).

    Returns
    -------
    list of float
        Mean training loss (multi-task loss + graph regularisation) per epoch.
    """
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        """Lightning wrapper of ``model`` for :func:`fit`: multi-task loss plus graph regularisation, per-epoch
        mean loss, attention diagnostics and the ``on_epoch_end`` callback."""
        def __init__(self):
            super().__init__()
            self.model = model
            self.epoch_losses: list[float] = []
            self._acc: list[float] = []

        def training_step(self, batch, _):
            """Loss of one :class:`Samples` batch: :func:`cellgraph.models.cell_graph_transformer.multitask_loss`
            of the per-sample predictions (:func:`per_sample`) with the task ``weights``, plus the model's graph
            regularisation (sum over graphs of lambda_k x mean KL). Returns the scalar total and records it."""
            out, reg, _ = self.model(batch)
            loss, _ = cgt.multitask_loss(per_sample(out, batch), batch, weights)
            total = loss + reg
            self._acc.append(float(total.detach()))
            return total

        def on_train_epoch_end(self):
            """Record the epoch's mean training loss; after every ``every``-th epoch and the last, append the
            encoder's attention diagnostics (eval mode) to ``diagnostics``; then run ``on_epoch_end(epoch, model)``
            (1-based epoch, eval mode) if given."""
            self.epoch_losses.append(float(np.mean(self._acc)))
            self._acc = []
            every = int(diagnostics.get("every", 1)) if diagnostics else 0
            last = self.current_epoch + 1 == max_epochs
            if diagnostics and ((self.current_epoch + 1) % every == 0 or last):
                self.model.eval()
                g_rows, h_rows = cgt.attention_diagnostics(self.model.encoder, diagnostics["graphs"], seed=seed)
                self.model.train()
                extra = {k: v for k, v in diagnostics.items() if k not in ("graphs", "graph_rows", "head_rows", "every")}
                tag = {**extra, "epoch": self.current_epoch + 1}
                diagnostics["graph_rows"].extend({**tag, **r} for r in g_rows)
                diagnostics["head_rows"].extend({**tag, **r} for r in h_rows)
            if on_epoch_end is not None:
                self.model.eval()
                on_epoch_end(self.current_epoch + 1, self.model)
                self.model.train()

        def configure_optimizers(self):
            """AdamW over all parameters with learning rate ``lr`` and ``weight_decay``."""
            return torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)

    pl.seed_everything(seed, workers=True, verbose=False)
    model.train()  # a model that has been used for prediction is in eval mode; Lightning keeps modes as found
    module = Module()
    loader = torch.utils.data.DataLoader(samples, batch_size=batch_size, shuffle=True, collate_fn=samples.collate,
                                         generator=torch.Generator().manual_seed(seed))
    _fit_on_cpu(module, loader, max_epochs)
    model.eval()
    return module.epoch_losses


@torch.no_grad()
def predict(model, sets: list, offsets: dict | None = None) -> dict:
    """Model outputs (numpy) for the given sets (plus per-sample ``offsets`` as in :class:`Samples`), one
    batch, eval mode; ``h_pert`` dropped.

    Parameters
    ----------
    model : torch.nn.Module
        Cell graph transformer; set to eval mode.
    sets : list of np.ndarray
        n perturbation sets, int gene indices into the model's universe.
    offsets : dict or None
        task -> float [n], added to that task's prediction of each set.

    Returns
    -------
    dict
        task -> np.ndarray [n, ...] (e.g. ``expression`` [n, N], ``fitness`` [n]).
    """
    model.eval()
    batch = Samples(sets, {}, offsets=offsets).collate(np.arange(len(sets)))
    out, _, _ = model(batch)
    return {k: v.numpy() for k, v in per_sample(out, batch).items()}


def graph_reg_from_flags(items: list[str]) -> dict:
    """``["physical:0:0:0.1", ...]`` -> {graph: [layer, head, lambda]}.

    Parameters
    ----------
    items : list of str
        ``--graph-reg`` values, each ``GRAPH:LAYER:HEAD:LAMBDA``; a later item for the same graph wins.

    Returns
    -------
    dict
        graph -> [layer int, head int, lambda float].

    Raises
    ------
    InputError
        If an item has fewer than four fields or a non-numeric layer, head or lambda.
    """
    out = {}
    for it in items:
        parts = it.split(":")
        try:
            out[parts[0]] = [int(parts[1]), int(parts[2]), float(parts[3])]
        except (IndexError, ValueError):
            raise InputError(f"--graph-reg {it!r}: expected GRAPH:LAYER:HEAD:LAMBDA, e.g. physical:0:0:0.1") from None
    return out


def restrict_graphs(mg: dict, genes: list[str], flip_directed: bool = False) -> tuple[dict, dict]:
    """Multigraph (``load_multigraph`` dict) restricted to ``genes`` -> ({graph: (edge_index [2, E] over
    positions in genes, weight [E], directed)}, {graph: edges kept}). Graphs with no edge are left out.

    Row i of an attention target attends to column j for an edge (i, j): as stored, a regulator attends to
    its targets. ``flip_directed`` reverses directed graphs, so that targets attend to their regulators.

    Parameters
    ----------
    mg : dict
        :func:`cellgraph.graphs.multigraph.load_multigraph` dict (``nodes``, ``edge_index``, ``edge_weight``,
        ``directed``).
    genes : list of str
        The universe [N]; edges with an endpoint outside it are dropped.
    flip_directed : bool
        Reverse the edges of directed graphs.

    Returns
    -------
    tuple of dict
        ({graph: (edge_index Long [2, E] over positions in ``genes``, weight float [E], directed bool)},
        {graph: number of edges kept}); the second lists every non-empty graph, also those with 0 kept.
    """
    pos = {g: i for i, g in enumerate(genes)}
    remap = torch.tensor([pos.get(n, -1) for n in mg["nodes"]], dtype=torch.long)
    out, kept = {}, {}
    for g, ei in mg["edge_index"].items():
        if ei.numel() == 0:
            continue
        e = remap[ei]  # [2, E]
        ok = (e >= 0).all(0)
        kept[g] = int(ok.sum())
        if kept[g]:
            e = e[:, ok].flip(0) if flip_directed and mg["directed"][g] else e[:, ok]
            out[g] = (e, mg["edge_weight"][g][ok], mg["directed"][g])
    return out, kept


def make_model(kind: str, n_genes: int, graphs: dict, report_key: str, report: dict, *, preset: str, head: str,
               graph_reg: dict, **overrides):
    """Cell graph transformer of ``kind`` and its configuration.

    Parameters
    ----------
    kind : ``"equivariant"`` or ``"non_equivariant"`` (:func:`cellgraph.models.cell_graph_transformer.build_model`).
    n_genes : size N of the gene universe.
    graphs : {graph: (edge_index Long [2, E], weight [E], directed)} as from :func:`restrict_graphs`.
    report_key : key under ``report["graph_reg_dropped"]`` (``"forward"``, ``"yeast"``).
    report : run report, updated in place: ``report["graph_reg_dropped"][report_key]`` lists the
        ``graph_reg`` graphs absent from ``graphs`` (their entries are dropped).
    preset : :data:`cellgraph.models.cell_graph_transformer.PRESETS` name (``--preset``).
    head : set readout, ``mean``, ``cross_attention`` or ``hypersagnn`` (``--head``).
    graph_reg : {graph: [layer, head, lambda]} graph-regularised attention heads (:func:`graph_reg_from_flags`).
    **overrides : further fields of :class:`~cellgraph.models.cell_graph_transformer.CGTConfig`.

    Returns
    -------
    (model, CGTConfig)
    """
    reg = {g: v for g, v in graph_reg.items() if g in graphs}
    report.setdefault("graph_reg_dropped", {})[report_key] = sorted(set(graph_reg) - set(reg))
    cfg = cgt.preset(preset, n_genes, head=head, graph_reg=reg, **overrides)
    return cgt.build_model(kind, cfg, graphs), cfg


# --------------------------------------------------------------------------------------------------
# Papalexi forward prediction
# --------------------------------------------------------------------------------------------------


def load_papalexi(path, min_grna_frac: float, control: str):
    """Read and filter the ECCITE-seq h5ad -> (adata with log-normalised X, report dict).

    Parameters
    ----------
    path : str or os.PathLike
        h5ad (``--adata``) with raw counts in X and obs columns ``perturbation`` and ``top_grna_frac``.
    min_grna_frac : float
        Keep cells with ``obs.top_grna_frac`` >= this, a fraction 0-1.
    control : str
        ``obs.perturbation`` label of the control cells.

    Returns
    -------
    tuple
        (AnnData of the kept cells: X log1p(counts per 1e4), ``layers["counts"]`` the raw counts,
        ``obs.perturbation`` str; report dict ``cells_read``, ``genes``, ``cells_dropped_top_grna_frac``,
        ``min_grna_frac``, ``cells_kept``, ``cells_per_perturbation``).

    Raises
    ------
    InputError
        If the file is missing, an obs column is missing, no control cell is left after the filter, or X
        holds negative or non-integer values.
    """
    import anndata as ad
    import scanpy as sc

    path = require_file(path, "--adata")
    adata = ad.read_h5ad(path)
    for col in ("perturbation", "top_grna_frac"):
        if col not in adata.obs:
            raise InputError(f"--adata {path}: obs has no column {col!r}")
    keep = adata.obs["top_grna_frac"].to_numpy(float) >= min_grna_frac
    rep = {"cells_read": int(adata.n_obs), "genes": int(adata.n_vars),
           "cells_dropped_top_grna_frac": int((~keep).sum()), "min_grna_frac": min_grna_frac}
    adata = adata[keep].copy()
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str)
    if (adata.obs["perturbation"] == control).sum() == 0:
        raise InputError(f"--adata {path}: no cell with obs.perturbation == {control!r} after the top_grna_frac filter")
    x = adata.X
    vals = x.data if hasattr(x, "data") else np.asarray(x).ravel()
    if vals.size and (vals.min() < 0 or not np.allclose(vals, np.round(vals))):
        raise InputError(f"--adata {path}: X must hold raw counts (non-negative whole numbers)")
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    rep["cells_kept"] = int(adata.n_obs)
    rep["cells_per_perturbation"] = adata.obs["perturbation"].value_counts().sort_index().to_dict()
    return adata, rep


def leave_perturbation_out_folds(perturbation: np.ndarray, control: str, n_folds: int, seed: int):
    """Split the non-control labels into ``n_folds`` groups -> list of (train cell positions, held-out labels).

    Control cells are always in training; no cell whose label is held out is in that fold's training set.

    Parameters
    ----------
    perturbation : np.ndarray
        str [C], perturbation label of every cell.
    control : str
        Label of the control cells.
    n_folds : int
        Number of folds.
    seed : int
        Seed of ``numpy.random.default_rng`` for the permutation of the labels.

    Returns
    -------
    list of tuple
        Per fold (training cell positions int [C_train], sorted list of held-out labels).

    Raises
    ------
    InputError
        If there are fewer non-control labels than ``n_folds``.
    """
    targets = np.array(sorted(set(perturbation) - {control}))
    if len(targets) < n_folds:
        raise InputError(f"{len(targets)} perturbations cannot be split into {n_folds} folds")
    rng = np.random.default_rng(seed)
    groups = np.array_split(rng.permutation(targets), n_folds)
    out = []
    for held in groups:
        held = sorted(str(h) for h in held)
        out.append((np.flatnonzero(~np.isin(perturbation, held)), held))
    return out


def papalexi_arrays(adata, control: str, graph_genes: set):
    """Universe, expression matrix and sets: -> dict with ``genes`` [N] (measured genes, then targets not
    measured, sorted), ``measured`` bool [N], ``expr`` float32 [C, N] (0 for unmeasured), ``sets`` list
    (one per cell), ``perturbation`` str [C].

    Parameters
    ----------
    adata : anndata.AnnData
        Cells of :func:`load_papalexi` (X log1p(counts per 1e4)).
    control : str
        Label of the control cells (their set is empty).
    graph_genes : set of str
        Nodes of the multigraph.

    Returns
    -------
    dict
        ``genes``, ``measured``, ``expr`` (log1p(counts per 1e4)), ``sets`` (int gene indices: the target, or
        empty for a control cell), ``perturbation``, ``targets_unmeasured`` (sorted) and
        ``genes_not_in_multigraph`` (sorted universe genes outside ``graph_genes``).
    """
    measured_genes = list(adata.var_names)
    pert = adata.obs["perturbation"].to_numpy(str)
    extra = sorted(set(pert) - {control} - set(measured_genes))
    genes = measured_genes + extra
    pos = {g: i for i, g in enumerate(genes)}
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    expr = np.zeros((adata.n_obs, len(genes)), np.float32)
    expr[:, : len(measured_genes)] = x
    measured = np.zeros(len(genes), bool)
    measured[: len(measured_genes)] = True
    sets = [np.array([], np.int64) if p == control else np.array([pos[p]]) for p in pert]
    return {"genes": genes, "measured": measured, "expr": expr, "sets": sets, "perturbation": pert,
            "targets_unmeasured": extra, "genes_not_in_multigraph": sorted(set(genes) - graph_genes)}


def write_diagnostics(out: Path, diag_rows: dict) -> None:
    """``attention_diagnostics.tsv`` (per epoch, fold, model, graph, layer, head) and ``attention_heads.tsv``
    (per epoch, fold, model, layer, head) in ``out``.

    Parameters
    ----------
    out : pathlib.Path
        Existing output folder.
    diag_rows : dict
        ``graph_rows`` and ``head_rows``: lists of row dicts filled by :func:`fit`.
    """
    for key, name in (("graph_rows", "attention_diagnostics.tsv"), ("head_rows", "attention_heads.tsv")):
        write_tsv(pd.DataFrame(diag_rows[key]), out / name)


# --------------------------------------------------------------------------------------------------
# Yeast fitness / epsilon
# --------------------------------------------------------------------------------------------------

COSTANZO_COLUMNS = ("genepairs", "Query_single_mutant_fitness_(SMF)", "Array_SMF", "Double_mutant_fitness")


def load_costanzo(path, info_path):
    """Costanzo fragment -> DataFrame (query, array ORFs; smf_q, smf_a, dmf, epsilon) and report.

    Names map through STRING ``protein.info`` ``preferred_name`` (case-insensitive) or, failing that, when the
    name is itself an ORF id. Rows with an unmapped name are dropped and counted.

    Parameters
    ----------
    path : str or os.PathLike
        Pairs csv (``--pairs``) with the columns of :data:`COSTANZO_COLUMNS`; ``genepairs`` is ``QUERY_ARRAY``.
    info_path : str or os.PathLike
        STRING ``protein.info`` TSV (``--string-info``) with ``#string_protein_id`` and ``preferred_name``.

    Returns
    -------
    tuple
        (DataFrame, one row per mapped pair: ``query``, ``array`` (ORFs), ``query_name``, ``array_name``,
        ``smf_q``, ``smf_a``, ``dmf`` (fitness), ``epsilon`` = dmf - smf_q smf_a; report dict ``pairs_read``,
        ``pairs_unmapped``, ``pairs_kept``, ``unmapped_names``).

    Raises
    ------
    InputError
        If a file is missing, a column is missing, or a ``genepairs`` value has no ``_``.
    """
    path = require_file(path, "--pairs")
    df = pd.read_csv(path)
    missing = [c for c in COSTANZO_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"--pairs {path}: missing column(s) {missing}")
    info = pd.read_csv(require_file(info_path, "--string-info"), sep="\t")
    if "preferred_name" not in info or "#string_protein_id" not in info:
        raise InputError(f"--string-info {info_path}: expected columns #string_protein_id, preferred_name")
    orf = info["#string_protein_id"].str.split(".", n=1).str[1]
    name2orf = dict(zip(info["preferred_name"].str.upper(), orf))
    name2orf.update({o.upper(): o for o in orf})
    parts = df["genepairs"].astype(str).str.split("_", n=1, expand=True)
    if parts.shape[1] != 2 or parts[1].isna().any():
        bad = int(np.flatnonzero(parts[1].isna().to_numpy())[0]) + 2 if parts.shape[1] == 2 else 2
        raise InputError(f"--pairs {path}: line {bad}: genepairs must be QUERY_ARRAY")
    q = parts[0].str.upper().map(name2orf)
    a = parts[1].str.upper().map(name2orf)
    ok = q.notna() & a.notna()
    out = pd.DataFrame({"query": q, "array": a, "query_name": parts[0], "array_name": parts[1],
                        "smf_q": df[COSTANZO_COLUMNS[1]].astype(float), "smf_a": df[COSTANZO_COLUMNS[2]].astype(float),
                        "dmf": df[COSTANZO_COLUMNS[3]].astype(float)})[ok].reset_index(drop=True)
    out["epsilon"] = out["dmf"] - out["smf_q"] * out["smf_a"]
    rep = {"pairs_read": int(len(df)), "pairs_unmapped": int((~ok).sum()), "pairs_kept": int(len(out)),
           "unmapped_names": sorted(set(parts[0][q.isna()]) | set(parts[1][a.isna()]))}
    return out, rep


def yeast_universe(mg: dict, seeds: list[str], hops: int) -> list[str]:
    """``seeds`` plus their ``hops``-hop neighbours over all graphs (hops < 0: every node), sorted.

    Parameters
    ----------
    mg : dict
        :func:`cellgraph.graphs.multigraph.load_multigraph` dict (``nodes``, ``edge_index``).
    seeds : list of str
        Phenotype genes (ORFs); those not in the multigraph are kept without neighbours.
    hops : int
        Neighbourhood radius over the union of the graphs' edges; < 0 for every node.

    Returns
    -------
    list of str
        Sorted gene names; for ``hops`` < 0, ``mg["nodes"]`` as stored (``seeds`` not added).
    """
    if hops < 0:
        return list(mg["nodes"])
    idx = {n: i for i, n in enumerate(mg["nodes"])}
    cur = {idx[s] for s in seeds if s in idx}
    allowed = set(cur)
    ei = torch.cat([e for e in mg["edge_index"].values() if e.numel()], 1).numpy() if mg["edge_index"] else np.zeros((2, 0))
    for _ in range(hops):
        hit = np.isin(ei[0], list(cur)) | np.isin(ei[1], list(cur))
        new = set(ei[0][hit]) | set(ei[1][hit])
        cur = new - allowed
        allowed |= new
    return sorted({mg["nodes"][i] for i in allowed} | set(seeds))


# --------------------------------------------------------------------------------------------------
# Reverse perturbation prediction (GREmLN paper 4.5, Table 3)
# --------------------------------------------------------------------------------------------------


def top_shift_perturbations(adata, control: str, n_top: int, n_comps: int, seed: int) -> pd.DataFrame:
    """Distance of each perturbation's centroid from the control centroid in PCA space (``scanpy.pp.pca`` of
    the log-normalised X, ``n_comps`` components) -> DataFrame (perturbation, n_cells, shift, top) sorted by
    shift, ``top`` True for the ``n_top`` largest (the paper's rule).

    Parameters
    ----------
    adata : anndata.AnnData
        Cells with log-normalised X and ``obs.perturbation`` (:func:`load_papalexi`).
    control : str
        Label of the control cells.
    n_top : int
        Number of perturbations flagged ``top`` (``--n-top-perturbations``).
    n_comps : int
        PCA components (at most n_genes - 1 are used).
    seed : int
        ``random_state`` of the PCA.

    Returns
    -------
    pd.DataFrame
        One row per non-control perturbation, by decreasing ``shift`` (Euclidean distance of centroids in PCA
        space): ``perturbation``, ``n_cells``, ``shift``, ``top`` (bool).

    Raises
    ------
    InputError
        If ``n_top`` exceeds the number of non-control perturbations.
    """
    import scanpy as sc

    x = sc.pp.pca(np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, dtype=np.float32),
                  n_comps=min(n_comps, adata.n_vars - 1), random_state=seed)
    pert = adata.obs["perturbation"].to_numpy(str)
    c0 = x[pert == control].mean(0)
    rows = [{"perturbation": p, "n_cells": int((pert == p).sum()), "shift": float(np.linalg.norm(x[pert == p].mean(0) - c0))}
            for p in sorted(set(pert) - {control})]
    df = pd.DataFrame(rows).sort_values("shift", ascending=False, kind="stable").reset_index(drop=True)
    if n_top > len(df):
        raise InputError(f"--n-top-perturbations {n_top}: only {len(df)} perturbations in --adata")
    df["top"] = np.arange(len(df)) < n_top
    return df


def tokenized_cells(model_path, adata, cells, networks_path, cell_type, seed, report: dict, key: str):
    """A main-job model (``cellgraph.models.gremln.load``) and the Papalexi cells ``cells`` tokenised for it
    -> (model, :class:`cellgraph.io.shards.TokenDataset`).

    The cells are tokenised with the model's PBMC vocabulary (``cellgraph.pp.tokenize.tokenize_cells``): genes
    of the vocabulary not measured here are zero (not expressed) and only the measured vocabulary genes become
    tokens. X for tokenisation is log1p(CPM) over the 299 genes (design.md section 2). The graph of every cell
    is the ARACNe network of ``cell_type`` in ``networks_path`` or, when that type has no network (held out),
    the union over types (maximum MI), which is reported under ``report[f"{key}_embedding"]``.

    Parameters
    ----------
    model_path : str or os.PathLike
        Main-job ``model.pt`` (``--gremln-model`` / ``--vanilla-model``).
    adata : anndata.AnnData
        Cells of :func:`load_papalexi` (raw counts in ``layers["counts"]``).
    cells : np.ndarray
        int [C], positions of the cells to tokenise.
    networks_path : str or os.PathLike
        ARACNe networks TSV (``--grn-networks``) with ``cell_type``, ``source``, ``target``, ``mi``.
    cell_type : str
        Cell type whose network is the cells' graph.
    seed : int
        Seed of the tokenisation.
    report : dict
        Run report, updated in place under ``f"{key}_embedding"``.
    key : str
        Model name (``"gremln"``, ``"vanilla"``) for option names and the report key.

    Returns
    -------
    tuple
        (loaded model, :class:`cellgraph.io.shards.TokenDataset` of the C cells).

    Raises
    ------
    InputError
        If the model or networks file is missing or the networks table lacks its columns.
    """
    import anndata as ad
    import scipy.sparse as sp

    from ..io import shards as cg_data
    from ..models import gremln
    from ..pp.tokenize import tokenize_cells

    model = gremln.load(require_file(model_path, f"--{key}-model"))
    vocab = list(model.vocab)
    genes = vocab[2:]
    present = set(adata.var_names)
    measured = [g for g in genes if g in present]
    counts = adata.layers["counts"][cells]
    counts = sp.csr_matrix(counts)
    lib = np.asarray(counts.sum(1)).ravel()
    col = adata.var_names.get_indexer(measured)
    x = sp.csr_matrix(np.log1p(counts[:, col].toarray() / np.maximum(lib, 1)[:, None] * 1e6).astype(np.float32))
    full = sp.hstack([x, sp.csr_matrix((len(cells), len(genes) - len(measured)), dtype=np.float32)]).tocsr()
    names = measured + [g for g in genes if g not in present]
    tok = ad.AnnData(full, obs=pd.DataFrame({"split": "test", "perturbation": adata.obs["perturbation"].to_numpy()[cells]},
                                             index=[f"c{i}" for i in range(len(cells))]),
                     var=pd.DataFrame(index=names))
    tok.uns["cellgraph"] = {"label_key": "perturbation"}
    nets = pd.read_csv(require_file(networks_path, "--grn-networks"), sep="\t")
    if not {"cell_type", "source", "target", "mi"} <= set(nets.columns):
        raise InputError(f"--grn-networks {networks_path}: expected columns cell_type, source, target, mi")
    sub = nets[nets["cell_type"] == cell_type]
    used = cell_type
    if sub.empty:
        sub = nets.groupby(["source", "target"], as_index=False)["mi"].max()
        used = f"union of {sorted(nets['cell_type'].unique())} ({cell_type} has no network)"
    graph = sub.rename(columns={"mi": "weight"})[["source", "target", "weight"]]
    max_len = int(getattr(model.config, "max_seq_len", 0) or 128)
    stats: dict = {}
    arrays = tokenize_cells(tok, np.arange(len(cells)), graph, vocab, model.config.n_bins, max_len, seed, stats)
    report[f"{key}_embedding"] = {"vocab_genes": len(genes), "vocab_genes_measured": len(measured),
                                  "graph": used, "graph_edges": int(len(graph)),
                                  "graph_edges_outside_vocab": int(stats.get("graph_edges_outside_vocab", 0))}
    return model, cg_data.TokenDataset.from_arrays(arrays)


@torch.no_grad()
def cls_embeddings(model, ds) -> np.ndarray:
    """CLS hidden states [C, d] of every cell of the token dataset ``ds`` (eval mode, batches of 64).

    Parameters
    ----------
    model : torch.nn.Module
        Main-job model (:func:`tokenized_cells`) whose ``encode(batch)`` gives [B, 1 + n, d]; set to eval mode.
    ds : cellgraph.io.shards.TokenDataset
        Tokenised cells (:func:`tokenized_cells`).

    Returns
    -------
    np.ndarray
        float32 [C, d], position 0 (CLS) of each cell's encoding.
    """
    from ..io import shards as cg_data

    model.eval()
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=False, collate_fn=cg_data.collate)
    return torch.cat([model.encode(batch)[:, 0] for batch in loader]).numpy()


def finetune_classifier(model, ds, y: np.ndarray, train: np.ndarray, test: np.ndarray, n_classes: int, *,
                        epochs: int, lr: float, seed: int) -> np.ndarray:
    """Fine-tune a copy of a GREmLN encoder with a linear classification head on its CLS state.

    Loss: cross-entropy; AdamW, learning rate ``lr`` for the encoder and 10 ``lr`` for the new head, ``epochs``
    passes over the training cells in batches of 64 (Lightning, CPU fp32); ``model`` itself is not changed.
    (GREmLN paper section 4.5: the pretrained encoder, all weights trained, with a classification head.)

    Parameters
    ----------
    model, ds : torch.nn.Module, cellgraph.io.shards.TokenDataset
        Encoder and tokenised cells of :func:`tokenized_cells`.
    y : np.ndarray
        int [C], class of every cell of ``ds``.
    train, test : np.ndarray
        int, cell positions in ``ds`` to train on and to predict.
    n_classes, epochs, lr, seed : int, int, float, int
        Number of classes, training epochs, encoder learning rate, seed (Lightning, batch order).

    Returns
    -------
    np.ndarray
        int [len(test)], predicted class of each test cell.
    """
    import copy

    import lightning.pytorch as pl

    from ..io import shards as cg_data

    class Classifier(pl.LightningModule):
        """The copied GREmLN encoder with a linear head [d_model] -> [n_classes] on its CLS state, trained with
        cross-entropy (AdamW: ``lr`` for the encoder, 10 ``lr`` for the head, weight decay 0.01).
        """
        def __init__(self):
            super().__init__()
            self.encoder = copy.deepcopy(model).train()
            self.head = torch.nn.Linear(model.config.d_model, n_classes)  # [d] -> [n_classes]

        def forward(self, batch):
            """Class logits [B, n_classes] of a token batch (design.md section 5) from the encoder's CLS state
            [B, d_model].
            """
            return self.head(self.encoder.encode(batch)[:, 0])  # [B, n_classes]

        def training_step(self, batch, _):
            """Cross-entropy of the batch's logits against ``batch["label"]`` Long [B]."""
            return torch.nn.functional.cross_entropy(self(batch), batch["label"])

        def configure_optimizers(self):
            """AdamW with learning rate ``lr`` for the encoder and ``10 * lr`` for the head, weight decay 0.01."""
            return torch.optim.AdamW([{"params": self.encoder.parameters(), "lr": lr},
                                      {"params": self.head.parameters(), "lr": 10 * lr}], weight_decay=0.01)

    labels = torch.as_tensor(y, dtype=torch.long)

    def collate(items):
        """:func:`cellgraph.io.shards.collate` of the items plus ``label`` Long [B], the class ``y`` of each item's
        ``cell_index``.
        """
        batch = cg_data.collate(items)
        batch["label"] = labels[batch["cell_index"]]
        return batch

    pl.seed_everything(seed, workers=True, verbose=False)
    clf = Classifier()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, train), batch_size=64, shuffle=True,
                                         collate_fn=collate, generator=torch.Generator().manual_seed(seed))
    _fit_on_cpu(clf, loader, epochs)
    clf.eval()
    test_loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, test), batch_size=64, shuffle=False,
                                              collate_fn=collate)
    with torch.no_grad():
        return torch.cat([clf(b).argmax(-1) for b in test_loader]).numpy()


def l1_logistic_regression(**kwargs):
    """L1-penalised (lasso) ``LogisticRegression`` with the saga solver on every scikit-learn the project allows.

    scikit-learn < 1.8 reads the penalty from ``penalty`` (``l1_ratio`` alone is ignored there, leaving L2);
    1.8 deprecates ``penalty`` in favour of ``l1_ratio=1``.

    Parameters
    ----------
    **kwargs
        Further arguments of ``sklearn.linear_model.LogisticRegression`` (e.g. ``C``, ``max_iter``, ``tol``).

    Returns
    -------
    sklearn.linear_model.LogisticRegression
        Unfitted estimator.
    """
    import sklearn
    from sklearn.linear_model import LogisticRegression

    major, minor = (int(x) for x in sklearn.__version__.split(".")[:2])
    if (major, minor) < (1, 8):
        return LogisticRegression(penalty="l1", solver="saga", **kwargs)
    return LogisticRegression(l1_ratio=1.0, solver="saga", **kwargs)


@dataclasses.dataclass(frozen=True)
class ReverseParams:
    """Options of reverse perturbation prediction (:func:`run_reverse`; ``cellgraph perturb --task reverse``).

    Attributes
    ----------
    control : obs.perturbation label of the control cells (``--control``, default ``"non-targeting"``).
    min_grna_frac : keep cells with ``obs.top_grna_frac`` >= this, a fraction (``--min-grna-frac``, default 0.8).
    n_top_perturbations : classes = the targets with the largest PCA centroid shift (``--n-top-perturbations``,
        default 20).
    n_splits : stratified 80/20 splits (``--n-splits``, default 3).
    grn_cell_type : ARACNe network of this cell type is the cells' graph (``--grn-cell-type``, default
        ``"Monocyte"``).
    finetune_epochs : epochs of fine-tuning each model with a classification head, 0 = skip
        (``--finetune-epochs``, default 3).
    finetune_lr : encoder learning rate of fine-tuning; the head gets 10x (``--finetune-lr``, default 1e-4).
    seed : seeds the PCA, the splits, the tokenisation and fine-tuning (split k: seed + k) (``--seed``, default 0).
    """

    control: str = "non-targeting"
    min_grna_frac: float = 0.8
    n_top_perturbations: int = 20
    n_splits: int = 3
    grn_cell_type: str = "Monocyte"
    finetune_epochs: int = 3
    finetune_lr: float = 1e-4
    seed: int = 0


def _model_features(params: ReverseParams, adata, cells: np.ndarray, report: dict, models: dict,
                    grn_networks) -> tuple[dict, dict]:
    """Frozen CLS embeddings ``{key}_frozen_probe`` [C, d] of each given model ({key: model path or None}) and,
    with ``params.finetune_epochs`` > 0, the (encoder, token dataset) pairs to fine-tune ``{key}_finetuned``."""
    features, encoders = {}, {}
    for key, path in models.items():
        if path:
            if not grn_networks:
                raise InputError("--task reverse with a model needs --grn-networks")
            enc, ds = tokenized_cells(path, adata, cells, grn_networks, params.grn_cell_type, params.seed, report, key)
            features[f"{key}_frozen_probe"] = cls_embeddings(enc, ds)
            if params.finetune_epochs > 0:
                encoders[f"{key}_finetuned"] = (enc, ds)
    return features, encoders


def run_reverse(params: ReverseParams, *, adata_path, out_dir: Path, gremln_model=None, vanilla_model=None,
                grn_networks=None) -> None:
    """``--task reverse``: predict which perturbation a cell received (GREmLN paper section 4.5, Table 3).

    Takes the cells of the ``params.n_top_perturbations`` targets with the largest PCA centroid shift
    (:func:`top_shift_perturbations`); on ``params.n_splits`` stratified 80/20 splits scores lasso logistic
    regression on expression and, per given model (graph ``params.grn_cell_type``), a logistic probe on frozen CLS
    embeddings and the encoder fine-tuned with a classification head (``params.finetune_epochs`` > 0). Writes
    ``metrics.tsv`` (split, method, accuracy, macro-F1, sizes), ``summary.tsv`` (mean, sd over splits),
    ``confusion.npz`` (``classes``, ``methods``, summed ``confusion`` [methods, classes, classes]), ``report.json``.

    Parameters
    ----------
    params, out_dir : ReverseParams, pathlib.Path
        Run options; existing output folder of the files above.
    adata_path : str or os.PathLike
        ECCITE-seq h5ad with raw counts (``--adata``; :func:`load_papalexi`).
    gremln_model, vanilla_model, grn_networks : str or os.PathLike or None
        Main-job ``model.pt`` files (None: skipped); ARACNe ``networks.tsv.gz``, required with a model.

    Raises
    ------
    InputError
        If an input file is unusable, a model is given without ``grn_networks``, or n_top_perturbations is too big.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
    from sklearn.model_selection import StratifiedShuffleSplit
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.time()
    adata, report = load_papalexi(adata_path, params.min_grna_frac, params.control)
    shifts = top_shift_perturbations(adata, params.control, params.n_top_perturbations, 20, params.seed)
    classes = shifts.loc[shifts["top"], "perturbation"].tolist()
    pert = adata.obs["perturbation"].to_numpy(str)
    cells = np.flatnonzero(np.isin(pert, classes))
    y = pert[cells]
    x = adata.X[cells].toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X[cells])
    models = {"gremln": gremln_model, "vanilla": vanilla_model}
    features, encoders = _model_features(params, adata, cells, report, models, grn_networks)
    features = {"lasso_expression": x, **features}
    class_of = {c: i for i, c in enumerate(classes)}
    y_int = np.array([class_of[v] for v in y])
    sss = StratifiedShuffleSplit(n_splits=params.n_splits, test_size=0.2, random_state=params.seed)
    rows, conf = [], {}
    for k, (tr, te) in enumerate(sss.split(cells, y)):
        predictions = {}
        for method, f in features.items():
            if method.startswith("lasso"):
                clf = l1_logistic_regression(C=0.1, max_iter=300, tol=1e-3)
            else:
                clf = LogisticRegression(C=1.0, max_iter=1000)
            predictions[method] = make_pipeline(StandardScaler(), clf).fit(f[tr], y[tr]).predict(f[te])
        for method, (enc, ds) in encoders.items():
            tf = time.time()
            pred_int = finetune_classifier(enc, ds, y_int, tr, te, len(classes), epochs=params.finetune_epochs,
                                           lr=params.finetune_lr, seed=params.seed + k)
            predictions[method] = np.asarray(classes)[pred_int]
            report.setdefault("finetune_seconds", []).append({"split": k, "method": method,
                                                              "seconds": round(time.time() - tf, 1)})
        for method, pred in predictions.items():
            rows.append({"split": k, "method": method, "accuracy": accuracy_score(y[te], pred),
                         "macro_f1": f1_score(y[te], pred, average="macro"), "n_train": len(tr), "n_test": len(te)})
            cm = confusion_matrix(y[te], pred, labels=classes)
            conf[method] = conf.get(method, 0) + cm
    metrics = pd.DataFrame(rows)
    g = metrics.groupby("method", sort=False)
    summary = g.agg(accuracy_mean=("accuracy", "mean"), accuracy_sd=("accuracy", "std"),
                    macro_f1_mean=("macro_f1", "mean"), macro_f1_sd=("macro_f1", "std")).reset_index()
    report.update(classes=classes, cells=int(len(cells)), shifts=shifts.to_dict("records"),
                  chance_accuracy=float(pd.Series(y).value_counts(normalize=True).max()),
                  seconds=round(time.time() - t0, 1))
    write_tsv(metrics, out_dir / "metrics.tsv")
    write_tsv(summary, out_dir / "summary.tsv", "%.4g")
    with atomic_path(out_dir / "confusion.npz") as tmp:
        np.savez_compressed(tmp, classes=np.array(classes), methods=np.array(list(conf)),
                            confusion=np.stack([conf[m] for m in conf]))
    write_json(out_dir / "report.json", report)
    log.info("reverse perturbation prediction:\n%s", summary.to_string(index=False))


# --------------------------------------------------------------------------------------------------
# Figures and tables
# --------------------------------------------------------------------------------------------------


def _write_table(df: pd.DataFrame, tables_dir: Path, name: str) -> None:
    with atomic_path(tables_dir / f"{name}.csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.4g")
    with atomic_path(tables_dir / f"{name}.md") as tmp:
        tmp.write_text(df.to_markdown(index=False, floatfmt=".3f") + "\n")


def _read(folder, name, what):
    return pd.read_csv(require_file(Path(folder) / name, what), sep="\t")


def run_figures(*, forward_dir, yeast_dir, reverse_dir, figures_dir, tables_dir) -> None:
    """Tables (csv + md) and figures of the forward, yeast and reverse results (module docstring).

    Parameters
    ----------
    forward_dir, yeast_dir, reverse_dir : results folders of ``--task forward``, ``yeast`` and ``reverse``
        (``metrics.tsv``, ``summary.tsv``, ``comparisons.tsv``, ``own_gene.tsv``, ``score_summary.tsv``,
        ``confusion.npz``, attention diagnostics).
    figures_dir : folder of the PNGs (``perturbation_forward.png``, ``perturbation_yeast.png``,
        ``perturbation_attention.png``, ``perturbation_reverse_confusion.png``).
    tables_dir : folder of the tables (``<name>.csv`` and ``<name>.md``).

    Raises
    ------
    InputError
        If a results file is missing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs, tabs = Path(figures_dir), Path(tables_dir)
    fwd = _read(forward_dir, "metrics.tsv", "forward metrics")
    rev = _read(reverse_dir, "metrics.tsv", "reverse metrics")
    cz = np.load(require_file(Path(reverse_dir) / "confusion.npz", "reverse confusion"))
    _write_table(_read(forward_dir, "summary.tsv", "forward summary"), tabs, "table_perturbation_forward")
    _write_table(_read(forward_dir, "comparisons.tsv", "forward comparisons"), tabs,
                 "table_perturbation_comparisons")
    own = _read(forward_dir, "own_gene.tsv", "forward own-gene changes")
    _write_table(own.groupby("method", sort=False).agg(n=("sign_correct", "size"), sign_correct=("sign_correct", "mean"),
                                                       predicted_mean=("own_gene_predicted", "mean"),
                                                       observed_mean=("own_gene_observed", "mean")).reset_index(),
                 tabs, "table_perturbation_own_gene")
    _write_table(_read(forward_dir, "score_summary.tsv", "forward score summary"), tabs, "table_perturbation_score")
    yst = _read(yeast_dir, "summary.tsv", "yeast summary")
    _write_table(yst, tabs, "table_perturbation_yeast")
    _write_table(_read(yeast_dir, "comparisons.tsv", "yeast comparisons"), tabs,
                 "table_perturbation_yeast_comparisons")
    g = rev.groupby("method", sort=False)
    _write_table(g.agg(accuracy_mean=("accuracy", "mean"), accuracy_sd=("accuracy", "std"),
                       macro_f1_mean=("macro_f1", "mean"), macro_f1_sd=("macro_f1", "std")).reset_index(),
                 tabs, "table3_reverse_perturbation")
    _forward_figure(plt, fwd, figs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, target in zip(axes, ("dmf", "epsilon")):
        sub = yst[(yst["target"] == target) & yst["pearson"].notna()]
        for i, (scheme, grp) in enumerate(sub.groupby("scheme", sort=False)):
            x = np.arange(len(grp)) + 0.4 * i
            ax.bar(x, grp["pearson"], 0.4, yerr=[grp["pearson"] - grp["ci_low"], grp["ci_high"] - grp["pearson"]],
                   label=f"{scheme} folds", capsize=2)
            ax.set_xticks(x, grp["method"], rotation=60, ha="right", fontsize=7)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"{target}: Pearson over pooled held-out pairs (95% bootstrap CI)", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, figs / "perturbation_yeast.png")

    _attention_figure(plt, {"papalexi": Path(forward_dir), "yeast": Path(yeast_dir)}, figs, tabs)

    methods, classes, conf = list(cz["methods"]), list(cz["classes"]), cz["confusion"]
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 5), squeeze=False)
    for ax, m, cm in zip(axes[0], methods, conf):
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=6)
        ax.set_yticks(range(len(classes)), classes, fontsize=6)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.tight_layout()
    save_figure(fig, figs / "perturbation_reverse_confusion.png")


def _forward_figure(plt, fwd: pd.DataFrame, figs: Path) -> None:
    """Per held-out perturbation (seeds averaged; sorted by split-half reliability): Pearson-delta of every
    method beside the noise ceiling."""
    per = fwd.groupby(["perturbation", "method"])[["pearson_delta", "noise_ceiling", "split_half_r"]].mean().reset_index()
    order = per.groupby("perturbation")["split_half_r"].first().sort_values().index
    fig, ax = plt.subplots(figsize=(11, 4.5))
    x = np.arange(len(order))
    ceiling = per.groupby("perturbation")["noise_ceiling"].first().loc[order]
    ax.fill_between(x, 0, ceiling, color="0.9", label="noise ceiling", step="mid")
    for method, grp in per.groupby("method", sort=False):
        if grp["pearson_delta"].notna().any():
            ax.plot(x, grp.set_index("perturbation").loc[order, "pearson_delta"], "o-", ms=3, lw=1, label=method)
    ax.set_xticks(x, order, rotation=90, fontsize=7)
    ax.set_ylabel("Pearson-delta (held-out, all measured genes)")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("Papalexi 2021 leave-perturbation-out; perturbations by split-half reliability (left: least)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, figs / "perturbation_forward.png")


def _attention_figure(plt, dirs: dict, figs: Path, tabs: Path) -> None:
    """Tables of the last epoch's attention diagnostics (each fold's last epoch; mean over folds) and a heatmap
    per dataset and model: attention mass on true edges per graph (rows) and (layer, head) (columns), regularised heads boxed."""
    g_parts, h_parts = [], []
    for dataset, d in dirs.items():
        g = pd.read_csv(require_file(d / "attention_diagnostics.tsv", f"{dataset} attention diagnostics"), sep="\t")
        h = pd.read_csv(require_file(d / "attention_heads.tsv", f"{dataset} attention heads"), sep="\t")
        # the last epoch of each (model, fold): early stopping may end folds at different epochs
        g_parts.append(g[g["epoch"] == g.groupby(["model", "fold"])["epoch"].transform("max")].assign(dataset=dataset))
        h_parts.append(h[h["epoch"] == h.groupby(["model", "fold"])["epoch"].transform("max")].assign(dataset=dataset))
    keys = ["dataset", "model", "graph", "layer", "head", "regularised"]
    metrics = [c for c in g_parts[0].columns if c.startswith(("recall", "precision", "edge_mass", "uniform"))]
    gt = pd.concat(g_parts).groupby(keys, sort=False)[metrics].mean().reset_index()
    ht = pd.concat(h_parts).groupby(["dataset", "model", "layer", "head"], sort=False)[
        ["entropy", "uniform_entropy", "effective_rank"]].mean().reset_index()
    _write_table(gt, tabs, "table_attention_diagnostics")
    _write_table(ht, tabs, "table_attention_heads")
    panels = list(gt.groupby(["dataset", "model"], sort=False))
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.2 + 0.9 * len(panels) * 2), squeeze=False)
    for ax, ((dataset, model), sub) in zip(axes[:, 0], panels):
        sub = sub.assign(col="L" + sub["layer"].astype(str) + "H" + sub["head"].astype(str))
        wide = sub.pivot(index="graph", columns="col", values="edge_mass")
        base = sub.pivot(index="graph", columns="col", values="uniform_mass")
        im = ax.imshow(wide.to_numpy(), aspect="auto", cmap="viridis", vmin=0)
        for i, gname in enumerate(wide.index):
            for j, cname in enumerate(wide.columns):
                bright = wide.iat[i, j] > 0.6 * np.nanmax(wide.to_numpy())
                ax.text(j, i, f"{wide.iat[i, j]:.2f}", ha="center", va="center", fontsize=6, color="k" if bright else "w")
                reg = sub[(sub["graph"] == gname) & (sub["col"] == cname)]["regularised"]
                if len(reg) and bool(reg.iloc[0]):
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
        ax.set_xticks(range(wide.shape[1]), wide.columns, fontsize=7)
        ax.set_yticks(range(wide.shape[0]), [f"{g} (uniform {base.loc[g].mean():.3f})" for g in wide.index], fontsize=7)
        ax.set_title(f"{dataset}, {model}: attention mass on true edges (red: regularised head)", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.02)
    fig.tight_layout()
    save_figure(fig, figs / "perturbation_attention.png")
