r"""Latent-token diffusion transformer: data, training, sampling, evaluation and figures.

The model core (encoder to T latent tokens, DiT denoiser with adaLN-Zero, condition embedders, DDPM/DDIM
with classifier-free guidance) is :mod:`cellgraph.models.diffusion`; this stage uses only its agreed
interface (``DiffusionConfig``, ``LatentDiffusion.loss/sample/set_latent_scale``).

``cellgraph diffusion --task train --dataset pbmc|papalexi``
    Data. *PBMC*: ``results/expression/adata.h5ad`` (``layers["counts"]``), genes = the highly variable genes
    (``--n-genes`` > 0: the top n of them by ``var.dispersions_norm``); the cells' expression is
    log1p(1e4 x counts / total over the modelled genes) (:func:`log_normalize`, the same transform as generated
    cells get; cells with no count on these genes are dropped and counted); condition = the cell type
    (``uns["cellgraph"]["label_key"]``). The model trains on the ``train`` split and is validated on ``val``;
    the held-out ``test`` cells are the evaluation's real cells. The types of the ``heldout`` split (the main
    job's unseen-graph types) have no training cell, so they have no condition index: their cells are left
    out of training, sampling and evaluation and counted in ``report.json``. *Papalexi*: the ECCITE-seq h5ad
    through :func:`cellgraph.tl.perturb.load_papalexi` (cells with ``top_grna_frac >= --min-grna-frac``, log1p of
    counts normalised to 1e4, the 299 measured genes); condition = the perturbation set {target gene}
    (control = the empty set). Leave-perturbation-out: the targets are split into ``--n-folds`` groups by
    :func:`cellgraph.tl.perturb.leave_perturbation_out_folds`; the first ``--folds-run`` folds are trained, each
    on every cell whose perturbation is not held out (control cells included; a seeded ``--val-fraction`` of
    them is kept aside for the validation loss). Set genes (``--set-features rwr``, the default) are
    embedded from fixed random-walk features on the human gene multigraph through one learned projection
    plus a shared "perturbed" vector, so a held-out target has no untrained row; with
    ``--set-features none`` every target has its own row (a held-out one keeps its random initialisation, or
    its GREmLN gene embedding with ``--gremln-init``).
    Observation model (``--likelihood``, default ``nb``): the autoencoder is variational (``--kl-weight``,
    warmed up over the first half of the autoencoder phase) with a latent of ``--n-tokens`` x
    ``--latent-dim`` values, and its decoder is the negative binomial of the raw counts with the cell's
    library size (``zinb``: zero-inflated; ``gaussian``: the former MSE on standardised log values). The
    gene-wise dispersion starts at its method-of-moments estimate.
    Every gene is standardised with the mean and sd of the training cells (sd floored at a quarter of the
    median gene sd); generated cells are mapped back and clipped at 0 (log expression is non-negative).
    Training: ``training_mode`` ``two_stage`` = ``--ae-steps`` optimiser steps of autoencoder
    (reconstruction) then ``--max-steps`` of diffusion in the frozen latent, its scale set by
    ``set_latent_scale`` on training cells at the phase change; ``end_to_end`` = ``--max-steps`` of the joint
    loss (steps are rounded up to whole epochs: validation and checkpoints are per epoch). AdamW (no decay on
    biases/norms), per phase a linear warm-up then cosine decay to 10% of ``--lr``; EMA of the weights
    (``torch.optim.swa_utils.AveragedModel`` + ``get_ema_multi_avg_fn``, restarted at the diffusion phase,
    so encoder/decoder weights equal the ones the latent scale was measured with). The loop, per-epoch
    checkpoints and resume are Lightning's as in :mod:`cellgraph.training.pretrain`: a run resumes from the newest
    checkpoint of ``--checkpoint-dir`` whose fingerprint (settings + input file bytes) matches, and starts
    over otherwise; the noise/time draws of a step come from a generator seeded by (seed, global step), so
    a resumed run ends with the weights of an uninterrupted one. bf16 autocast on CUDA.
    Outputs: ``model.pt`` (config, EMA weights per fold, genes, standardisation and training library sizes
    per fold, conditions, run summary) and ``metrics.tsv`` (``fold, epoch, phase, train_loss, val_loss,
    seconds``).
    Defaults (= config/config.yaml): v-prediction (with eps + cosine, PBMC samples saturated at the model's
    latent clip and ignored the cell type; v gave mean-expression Pearson ~0.98), guidance scale 1 (the
    guidance curve on PBMC degrades with larger scales), one torch thread (the demo model is tiny; on a shared
    2-core machine two threads ran 5-20x slower). scanpy/numba preprocessing resets torch's thread count, so
    it is set again before training and sampling.

``cellgraph diffusion --task sample``
    DDIM (``--ddim-steps``, ``--eta``) or DDPM ancestral (all ``n_timesteps``) with classifier-free guidance
    ``--guidance-scale``, EMA weights. PBMC: per cell type as many cells as the real ``test`` cells of that
    type. Papalexi: per fold ``--n-generate`` cells for the control (empty
    set) and for every perturbation (held-out and training), all conditions from the same initial noise and
    count seeds (common random numbers, :func:`generate_paired`). Count models: each cell's library size is
    drawn from the training cells of its condition (a held-out perturbation: all training cells of the
    fold), its counts from the decoder's NB/ZINB. ``generated.h5ad``: ``X`` float32 log1p CP10k over the
    model's genes (the real cells' transform), ``layers["counts"]`` the sampled counts (count models);
    ``obs``: PBMC the label column (categorical) ; Papalexi ``perturbation``, ``set_genes``
    (";"-joined, empty for control), ``fold``, ``heldout``; both ``sampler`` and ``guidance_scale``;
    ``uns["diffusion"]`` the settings and seconds.

``cellgraph diffusion --task evaluate``
    PBMC, per cell type, generated vs real test cells: Pearson of the mean expression over genes, MMD (RBF,
    median-heuristic bandwidth, biased V-statistic) and energy distance in the PCA space (``--n-pcs``) fitted
    on the real training cells, and a classifier two-sample test (random forest, stratified 5-fold
    cross-validated AUROC; 0.5 = indistinguishable), zero fraction, per-gene zero-fraction Pearson and the
    mean-variance relation (:func:`sparsity_metrics`). References with the same metrics: ``scvi`` (scVI of
    scvi-tools trained here on the same training counts, sampled from its generative model with the cell type
    as its decoder covariate and library sizes drawn as for the diffusion model; ``--scvi-epochs`` 0 = off),
    ``train_cells`` (real train cells of the type, as many as test cells: the sampling-noise floor) and
    ``all_types`` (train cells of all types: what an unconditional model would score). ``criteria.tsv``
    checks the acceptance bar per type (pbmc_criteria). UMAP of real test + generated cells.
    Papalexi, per perturbation of each fold: Pearson (``pearson_delta``), Spearman, top-20-DE Pearson and MSE
    between the generated mean change (generated S={p} minus generated control) and the observed mean change
    (all cells of p minus all control cells) over the measured genes, with the perturbation's split-half
    noise ceiling; baselines ``no_change`` (Pearson undefined: empty) and ``train_mean_change`` (the mean
    observed change of the fold's training perturbations); ``summary.tsv`` (bootstrap CIs over
    perturbations) and ``comparison.tsv`` (paired one-sided Wilcoxon, diffusion vs train_mean_change).
    Both: guidance scale vs quality (``--guidance-scales``; PBMC mean MMD / Pearson over types; Papalexi
    mean Pearson over the held-out perturbations of the first fold), sampling seconds per 1,000 cells for
    DDPM and DDIM (``--timing-cells`` cells, extrapolated), tables (tsv), figures (png) and ``report.json``.
"""

from __future__ import annotations

import copy
import json
import dataclasses
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..graphs.gene_features import gremln_vectors, random_walk_features
from .perturb_eval import pearson, pearson_spearman
from ..io import atomic_path, require_file, save_figure, write_json, write_tsv

log = logging.getLogger(__name__)

TASKS = ("train", "sample", "evaluate")
DATASETS = ("pbmc", "papalexi")
METRIC_COLUMNS = ["fold", "epoch", "phase", "train_loss", "val_loss", "seconds"]
SAMPLERS = ("ddim", "ddpm")
LIKELIHOODS = ("nb", "zinb", "gaussian")
SET_FEATURES = ("rwr", "none")


_THREADS: list[int] = []  # torch CPU threads of this run (scanpy/numba resets torch's count: set it again)


def _set_threads() -> None:
    if _THREADS:
        torch.set_num_threads(_THREADS[0])


def set_threads(n: int) -> None:
    """Use ``n`` torch CPU threads in this run, now and again after each step that resets torch's count
    (scanpy/numba preprocessing, scVI): training, sampling and the scVI baseline set it again.

    Parameters
    ----------
    n : int
        torch CPU (intra-op) threads, passed to ``torch.set_num_threads``.
    """
    _THREADS[:] = [n]
    _set_threads()


def _model_core():
    from ..models import diffusion as core  # imported when used: torch model code only for train/sample/evaluate

    return core


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
    """One dataset ready for the model: expression [C, G] (log scale), condition labels [C], splits."""

    dataset: str
    genes: list[str]
    x: np.ndarray  # float32 [C, G]
    labels: np.ndarray  # str [C]: cell type (PBMC) or perturbation (Papalexi)
    split: np.ndarray  # str [C]: PBMC split; Papalexi "all"
    vocab: list[str]  # PBMC: cell types with training cells; Papalexi: targets (set-gene vocabulary)
    label_key: str  # obs column of the condition in generated.h5ad
    control: str = ""
    report: dict = dataclasses.field(default_factory=dict)
    counts: np.ndarray | None = None  # float32 [C, G] raw counts over the modelled genes (x is their log1p CP10k)


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, np.float32)


def log_normalize(counts: np.ndarray) -> np.ndarray:
    """Counts [C, G] -> log1p(1e4 * counts / total) [C, G] float32 over the given genes (``sc.pp.normalize_total``
    with target_sum 1e4, then ``sc.pp.log1p``); real and generated cells both go through this.

    Parameters
    ----------
    counts : array-like
        Counts [C, G] (non-negative; the total of a cell is over these G genes). Not modified.

    Returns
    -------
    np.ndarray
        float32 [C, G] log1p(CP10k).
    """
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(X=np.asarray(counts, np.float32).copy())
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return _dense(a.X)


def load_pbmc(path, n_genes: int = 0) -> Data:
    """``results/expression/adata.h5ad`` -> :class:`Data` (module docstring). InputError on missing fields.

    Parameters
    ----------
    path : str or Path
        The expression stage's h5ad (``--adata``).
    n_genes : int
        > 0: the top n HVGs by ``var.dispersions_norm`` (the first n without it); 0 = all HVGs.

    Returns
    -------
    Data
        ``dataset="pbmc"``: ``x`` float32 log1p(CP10k) and ``counts`` float32 [C, G] over the modelled genes
        (cells with no count on them dropped), cell-type labels, ``split``, ``vocab`` = types with training
        cells, ``report`` (cells and genes read, modelled and dropped).

    Raises
    ------
    InputError
        If the file is missing or not an h5ad, lacks the label key, an obs/var column or ``layers["counts"]``,
        selects no HVG, has counts that are not non-negative whole numbers, or has no training cell or no test
        cell of a type with training cells.
    """
    import anndata as ad

    path = require_file(path, "--adata")
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"--adata {path}: not a readable h5ad ({type(err).__name__}: {err})") from err
    label_key = str(adata.uns.get("cellgraph", {}).get("label_key", ""))
    if not label_key:
        raise InputError(f"--adata {path}: uns['cellgraph']['label_key'] missing (expected the expression stage output)")
    for col in (label_key, "split"):
        if col not in adata.obs:
            raise InputError(f"--adata {path}: obs has no column {col!r}")
    if "highly_variable" not in adata.var:
        raise InputError(f"--adata {path}: var has no column 'highly_variable'")
    hvg = adata.var["highly_variable"].to_numpy(bool)
    if not hvg.any():
        raise InputError(f"--adata {path}: var.highly_variable selects no gene")
    genes_idx = np.flatnonzero(hvg)
    if n_genes and n_genes < len(genes_idx):
        if "dispersions_norm" in adata.var:
            disp = adata.var["dispersions_norm"].to_numpy(float)[genes_idx]
            genes_idx = np.sort(genes_idx[np.argsort(-np.nan_to_num(disp, nan=-np.inf), kind="stable")[:n_genes]])
        else:
            genes_idx = genes_idx[:n_genes]
    if "counts" not in adata.layers:
        raise InputError(f"--adata {path}: layers has no 'counts' (expected the expression stage output)")
    counts = _dense(adata.layers["counts"][:, genes_idx])
    if not np.isfinite(counts).all() or counts.min() < 0 or not np.allclose(counts, np.round(counts)):
        raise InputError(f"--adata {path}: layers['counts'] must hold non-negative whole numbers")
    empty = counts.sum(1) == 0  # no count on the modelled genes: no library size, nothing to normalise
    n_read = int(adata.n_obs)
    adata, counts = adata[~empty], counts[~empty]
    sub = adata[:, genes_idx]
    x = log_normalize(counts)
    labels = adata.obs[label_key].astype(str).to_numpy()
    split = adata.obs["split"].astype(str).to_numpy()
    vocab = sorted(set(labels[split == "train"]))
    if not vocab:
        raise InputError(f"--adata {path}: no cell with obs.split == 'train'")
    if not ((split == "test") & np.isin(labels, vocab)).any():
        raise InputError(f"--adata {path}: no 'test' cell of a type with training cells")
    unseen = sorted(set(labels) - set(vocab))
    rep = {
        "cells_read": n_read, "genes_read": int(adata.n_vars), "hvg": int(hvg.sum()),
        "genes_modelled": int(len(genes_idx)), "label_key": label_key, "cell_types": vocab,
        "cells_dropped_no_count_on_modelled_genes": int(empty.sum()),
        "expression": "log1p(1e4 * counts / total over the modelled genes)",
        "cells_per_split": pd.Series(split).value_counts().sort_index().to_dict(),
        "types_without_training_cells": unseen,
        "cells_dropped_type_without_training_cells": int(np.isin(labels, unseen).sum()),
        "heldout_types": [str(t) for t in adata.uns.get("cellgraph", {}).get("heldout_types", [])],
    }
    return Data("pbmc", [str(g) for g in sub.var_names], x, labels, split, vocab, label_key, report=rep,
                counts=counts)


def load_papalexi_data(path, min_grna_frac: float, control: str) -> Data:
    """The Papalexi h5ad through :func:`cellgraph.tl.perturb.load_papalexi` -> :class:`Data`.

    Parameters
    ----------
    path : str or Path
        The ECCITE-seq h5ad (``--adata``).
    min_grna_frac : float
        Keep cells with ``top_grna_frac`` >= this fraction (0-1).
    control : str
        obs.perturbation label of the control cells.

    Returns
    -------
    Data
        ``dataset="papalexi"``: ``x`` float32 log1p(CP10k) and ``counts`` float32 [C, G] over the measured
        genes (cells with no count dropped), perturbation labels, split ``"all"``, ``vocab`` = the targets
        (labels other than ``control``), ``control``, ``report``.

    Raises
    ------
    InputError
        As :func:`cellgraph.tl.perturb.load_papalexi` (missing file or column, no control cell, X not
        counts), or if no cell is perturbed.
    """
    from .perturb import load_papalexi

    adata, rep = load_papalexi(path, min_grna_frac, control)
    counts = _dense(adata.layers["counts"])
    empty = counts.sum(1) == 0
    adata, counts = adata[~empty], counts[~empty]
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    labels = adata.obs["perturbation"].to_numpy(str)
    vocab = sorted(set(labels) - {control})
    if not vocab:
        raise InputError(f"--adata {path}: no perturbed cell (every obs.perturbation is {control!r})")
    rep = {**rep, "measured_genes": int(adata.n_vars), "targets": vocab,
           "targets_not_measured": sorted(set(vocab) - set(adata.var_names)),
           "cells_dropped_no_count": int(empty.sum())}
    return Data("papalexi", [str(g) for g in adata.var_names], np.asarray(x, np.float32), labels,
                np.full(len(labels), "all"), vocab, "perturbation", control, rep, counts)


def load_data(dataset: str, adata_path, *, n_genes: int = 0, min_grna_frac: float = 0.8,
              control: str = "non-targeting") -> Data:
    """The data set ``dataset`` as :class:`Data`.

    Parameters
    ----------
    dataset : ``"pbmc"`` (:func:`load_pbmc` with ``n_genes``) or ``"papalexi"`` (:func:`load_papalexi_data`
        with ``min_grna_frac`` and ``control``).
    adata_path : the h5ad (``--adata``).
    n_genes : PBMC: top n HVGs by normalised dispersion, 0 = all HVGs (``--n-genes``).
    min_grna_frac : Papalexi: keep cells with ``top_grna_frac`` >= this fraction (``--min-grna-frac``).
    control : Papalexi: obs.perturbation label of control cells (``--control``).

    Returns
    -------
    Data
        The data set (:func:`load_pbmc` or :func:`load_papalexi_data`).

    Raises
    ------
    InputError
        On a bad h5ad.
    """
    if dataset == "pbmc":
        return load_pbmc(adata_path, n_genes)
    return load_papalexi_data(adata_path, min_grna_frac, control)


def conditions(data: Data | dict, labels: Sequence[str]) -> dict[str, torch.Tensor]:
    """Condition dict of the interface for ``labels``: ``cell_type`` (PBMC) or ``set_genes``/``set_mask``.

    Parameters
    ----------
    data : Data or dict
        The data set, or the ``conditions`` dict of ``model.pt`` (``dataset``, ``vocab``, optional ``control``).
    labels : sequence of str
        Condition of each of n cells: a cell type (PBMC) or a perturbation (``control`` = the empty set).

    Returns
    -------
    dict of str to torch.Tensor
        PBMC: ``cell_type`` Long [n] (index in ``vocab``). Papalexi: ``set_genes`` Long [n, 1] (index of the
        target in ``vocab``, 0 for control) and ``set_mask`` Bool [n, 1] (False for control).

    Raises
    ------
    InputError
        If a cell type or perturbation (other than ``control``) is not in ``vocab``.
    """
    dataset, vocab, control = ((data.dataset, data.vocab, data.control) if isinstance(data, Data)
                               else (data["dataset"], data["vocab"], data.get("control", "")))
    pos = {v: i for i, v in enumerate(vocab)}
    labels = list(labels)
    if dataset == "pbmc":
        missing = sorted(set(labels) - set(pos))
        if missing:
            raise InputError(f"cell types without a condition index: {missing[:5]}")
        return {"cell_type": torch.tensor([pos[l] for l in labels], dtype=torch.long)}
    genes = torch.zeros(len(labels), 1, dtype=torch.long)
    mask = torch.zeros(len(labels), 1, dtype=torch.bool)
    for i, l in enumerate(labels):
        if l != control:
            if l not in pos:
                raise InputError(f"perturbation {l!r} is not in the set-gene vocabulary")
            genes[i, 0], mask[i, 0] = pos[l], True
    return {"set_genes": genes, "set_mask": mask}


def folds_of(data: Data, n_folds: int, folds_run: int, seed: int, val_fraction: float,
             max_train_cells: int = 0) -> list[dict]:
    """Training/validation cell positions per fold (PBMC: one fold = the split) and held-out labels.

    Parameters
    ----------
    data : Data
        The data set. PBMC: train/val = the ``split`` "train"/"val" cells of types in ``vocab``.
    n_folds : int
        Papalexi: leave-perturbation-out folds (:func:`cellgraph.tl.perturb.leave_perturbation_out_folds`).
    folds_run : int
        Papalexi: only the first ``folds_run`` folds are returned.
    seed : int
        Seeds the folds, the validation draw and the subsets.
    val_fraction : float
        Papalexi: fraction (0-1) of a fold's training cells drawn for validation.
    max_train_cells : int
        > 0: a seeded random subset of that many training cells (validation: the same fraction of its
        cells, at least 1), for quick runs; 0 = all.

    Returns
    -------
    list of dict
        One per fold: ``fold`` (int), ``train`` and ``val`` (int arrays of cell positions in ``data``) and
        ``heldout`` (list of held-out perturbations; PBMC: empty).
    """
    if data.dataset == "pbmc":
        known = np.isin(data.labels, data.vocab)
        folds = [(0, np.flatnonzero((data.split == "train") & known), np.flatnonzero((data.split == "val") & known), [])]
    else:
        from .perturb import leave_perturbation_out_folds

        folds = []
        for k, (train_idx, held) in enumerate(leave_perturbation_out_folds(data.labels, data.control, n_folds, seed)):
            if k >= folds_run:
                break
            rng = np.random.default_rng([seed, 7, k])
            is_val = rng.random(len(train_idx)) < val_fraction
            folds.append((k, train_idx[~is_val], train_idx[is_val], list(held)))
    out = []
    for k, tr, va, held in folds:
        if max_train_cells and len(tr) > max_train_cells:
            rng = np.random.default_rng([seed, 11, k])
            keep = max_train_cells / len(tr)
            tr = np.sort(rng.choice(tr, max_train_cells, replace=False))
            va = np.sort(rng.choice(va, max(1, int(round(keep * len(va)))), replace=False)) if len(va) else va
        out.append({"fold": k, "train": tr, "val": va, "heldout": held})
    return out


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainSettings:
    """Optimisation settings of one training run (:func:`fit`), stored in ``model.pt`` and the fingerprint.

    Attributes
    ----------
    ae_steps : two_stage: optimiser steps of the autoencoder phase (rounded up to whole epochs).
    max_steps : optimiser steps of the diffusion (or end_to_end) phase (rounded up to whole epochs).
    batch_size : cells per batch.
    lr : peak AdamW learning rate of each phase.
    weight_decay : AdamW weight decay (weights of dim >= 2 only).
    ema_decay : decay of the exponential moving average of the weights.
    seed : seeds the batch order and the per-step noise/time draws.
    """
    ae_steps: int = 1500  # two_stage: autoencoder optimiser steps (rounded up to whole epochs)
    max_steps: int = 3000  # diffusion (or end_to_end) optimiser steps (rounded up to whole epochs)
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    ema_decay: float = 0.995
    seed: int = 0


def _lightning():
    import lightning.pytorch as pl

    return pl


def _phases(cfg, s: TrainSettings, steps_per_epoch: int) -> list[tuple[str, int]]:
    """(phase, epochs) in order; the steps of a phase are rounded up to whole epochs."""
    epochs = lambda steps: max(1, math.ceil(steps / max(steps_per_epoch, 1)))  # noqa: E731
    if cfg.training_mode == "two_stage":
        return [("autoencoder", epochs(s.ae_steps)), ("diffusion", epochs(s.max_steps))]
    return [("end_to_end", epochs(s.max_steps))]


class DiffusionModule(_lightning().LightningModule):
    """Lightning wrapper: phases, AdamW + per-phase warm-up/cosine, EMA, metric history in checkpoints.

    ``x_scale`` [N, G] are the (standardised) training cells used for ``set_latent_scale`` at the start of
    the diffusion phase (two_stage).
    """

    def __init__(self, config: dict, settings: dict, x_scale: torch.Tensor,
                 init: Callable[[Any], None] | None = None, steps_per_epoch: int = 1):
        super().__init__()
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        core = _model_core()
        self.cfg = core.DiffusionConfig(**config)
        self.settings = TrainSettings(**settings)
        self.model = core.LatentDiffusion(self.cfg)
        if init is not None:
            init(self.model)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.settings.ema_decay),
                                 use_buffers=False)
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.x_scale = x_scale
        self.steps_per_epoch = steps_per_epoch
        self.phases = _phases(self.cfg, self.settings, steps_per_epoch)
        self.history: list[dict] = []
        self.run_fingerprint: str | None = None
        self.fold = 0
        self._acc = [0.0, 0]
        self._val = [0.0, 0]
        self._t0 = time.perf_counter()

    def phase_of(self, epoch: int) -> str:
        """The training phase (``autoencoder``, ``diffusion`` or ``end_to_end``) of the 0-based ``epoch``.

        Phases follow each other in the order of ``self.phases``; an epoch past the last one gets the last phase.
        """
        done = 0
        for name, n in self.phases:
            done += n
            if epoch < done:
                return name
        return self.phases[-1][0]

    def _phase_start_epoch(self, phase: str) -> int:
        start = 0
        for name, n in self.phases:
            if name == phase:
                return start
            start += n
        return 0

    def on_train_epoch_start(self) -> None:
        """Reset the epoch's training-loss sum and timer; at the first epoch of the diffusion phase, fix the latent.

        There (two_stage), :meth:`LatentDiffusion.set_latent_scale` runs on ``x_scale`` in eval mode without
        gradients, and the EMA restarts (``n_averaged`` set to 0) so it averages only weights of this phase.
        """
        self._acc, self._t0 = [0.0, 0], time.perf_counter()
        phase = self.phase_of(self.current_epoch)
        if phase == "diffusion" and self.current_epoch == self._phase_start_epoch("diffusion"):
            was = self.model.training
            self.model.eval()
            with torch.no_grad():
                self.model.set_latent_scale(self.x_scale.to(self.device))
            self.model.train(was)
            self.ema.n_averaged.zero_()  # the EMA restarts with the (frozen) autoencoder of this phase

    def _gen(self, offset: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(int(self.settings.seed) * 1_000_003 + int(offset))
        return g

    def training_step(self, batch, batch_idx):
        """Loss of the current phase on one batch; returns the scalar loss for Lightning's optimiser step.

        ``batch`` is ``(x, cond, [counts])``: x float [B, G] standardised log expression, ``cond`` the condition
        dict (:func:`conditions`), counts float [B, G] the raw counts (nb/zinb models). The noise and timestep
        draws come from a generator seeded by (seed, global step), so a resumed run draws what an uninterrupted
        one would. The KL term is warmed up linearly over the first half of the first phase.
        """
        x, cond, *counts = batch
        phase = self.phase_of(self.current_epoch)
        # KL warm-up over the first half of the autoencoder phase (against posterior collapse)
        warm = 0.5 * self.phases[0][1] * self.steps_per_epoch
        loss, _ = self.model.loss(x, cond, phase, generator=self._gen(self.global_step),
                                  counts=counts[0] if counts else None,
                                  kl_scale=min(1.0, (self.global_step + 1) / max(warm, 1.0)))
        self._acc[0] += float(loss.detach()) * len(x)
        self._acc[1] += len(x)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        """Update the EMA of the weights after each optimiser step, except in the autoencoder phase."""
        if self.phase_of(self.current_epoch) != "autoencoder":
            self.ema.update_parameters(self.model)

    def on_validation_epoch_start(self) -> None:
        """Reset the validation-loss sum and cell count of the epoch."""
        self._val = [0.0, 0]

    def validation_step(self, batch, batch_idx):
        """Add the batch's loss of the current phase (times its cell count) to the epoch's validation sum.

        ``batch`` as in :meth:`training_step`; the draws come from a generator seeded by ``10**12 + batch_idx``,
        so every epoch is validated on the same timesteps and noise. Returns nothing (no logging to Lightning).
        """
        x, cond, *counts = batch
        phase = self.phase_of(self.current_epoch)
        loss, _ = self.model.loss(x, cond, phase, generator=self._gen(10**12 + batch_idx),
                                  counts=counts[0] if counts else None)
        self._val[0] += float(loss) * len(x)
        self._val[1] += len(x)

    def on_train_epoch_end(self) -> None:  # after this epoch's validation
        """Append the epoch's metrics row to ``history`` and log it (runs after the epoch's validation).

        The row has ``fold``, 1-based ``epoch``, ``phase``, the cell-weighted mean ``train_loss`` and
        ``val_loss`` (nan without validation cells) and the epoch's wall-clock ``seconds`` (:data:`METRIC_COLUMNS`).
        """
        row = {"fold": self.fold, "epoch": int(self.current_epoch) + 1, "phase": self.phase_of(self.current_epoch),
               "train_loss": self._acc[0] / max(self._acc[1], 1),
               "val_loss": self._val[0] / self._val[1] if self._val[1] else float("nan"),
               "seconds": time.perf_counter() - self._t0}
        self.history.append(row)
        log.info("fold %d epoch %d (%s): train_loss %.4f val_loss %.4f (%.1f s)", row["fold"], row["epoch"],
                 row["phase"], row["train_loss"], row["val_loss"], row["seconds"])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store the metrics history (``metrics_history``) and the run fingerprint (``cellgraph_fingerprint``)
        in ``checkpoint``, so a resume restores the history and :func:`cellgraph.training.pretrain.select_checkpoint` can
        match the run.
        """
        checkpoint["metrics_history"] = [dict(r) for r in self.history]
        checkpoint["cellgraph_fingerprint"] = self.run_fingerprint

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the metrics history from a checkpoint written by :meth:`on_save_checkpoint`."""
        self.history = [dict(r) for r in checkpoint.get("metrics_history", [])]

    def configure_optimizers(self):
        """AdamW and its per-step learning-rate schedule, in Lightning's dict form.

        Weight decay applies to weights of dim >= 2 only (none on biases and norms). The schedule restarts in
        every phase: a linear warm-up over ``min(100, max(1, phase_steps // 10))`` steps, then cosine decay to
        10% of ``lr`` at the end of the phase (``interval="step"``).
        """
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.settings.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.settings.lr)
        bounds, start = [], 0
        for _, n in self.phases:
            bounds.append((start, n * self.steps_per_epoch))
            start += n * self.steps_per_epoch

        def factor(step: int) -> float:
            """Learning-rate multiplier at global optimiser step ``step``: within its phase (after the last
            phase: the last one), ``(k + 1) / warm`` during warm-up, then ``0.1 + 0.45 (1 + cos(pi progress))``.
            """
            s0, length = bounds[-1]
            for b in bounds:
                if b[0] <= step < b[0] + b[1]:
                    s0, length = b
                    break
            k = step - s0
            warm = max(1, min(100, length // 10))
            if k < warm:
                return (k + 1) / warm
            progress = min((k - warm) / max(length - warm, 1), 1.0)
            return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def averaged_model(self):
        """A copy of the model with the EMA weights (the live buffers, e.g. the latent scale)."""
        model = copy.deepcopy(self.model).float().cpu().eval()
        if int(self.ema.n_averaged) > 0:
            ema = dict(self.ema.module.named_parameters())
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(ema[name].detach().float().cpu())
        return model


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return int(i)


class _Collate:
    def __init__(self, x: torch.Tensor, cond: dict[str, torch.Tensor], counts: torch.Tensor | None = None):
        self.x, self.cond, self.counts = x, cond, counts

    def __call__(self, idx: list[int]):
        i = torch.tensor(idx, dtype=torch.long)
        batch = (self.x[i], {k: v[i] for k, v in self.cond.items()})
        return batch if self.counts is None else (*batch, self.counts[i])


def _loader(x, cond, batch_size: int, seed: int, shuffle: bool, counts=None):
    from ..training.pretrain import ShardedBatchSampler

    sampler = ShardedBatchSampler(len(x), batch_size, seed=seed, shuffle=shuffle)
    return torch.utils.data.DataLoader(_Indices(len(x)), batch_sampler=sampler,
                                       collate_fn=_Collate(x, cond, counts))


def _resume_point(config: dict, settings: TrainSettings, checkpoint_dir, fingerprint_files: Sequence,
                  fingerprint_extra: dict | None) -> tuple[Path, str, Path | None, list[str]]:
    """Create ``checkpoint_dir``, fingerprint the run and pick the checkpoint to resume (part of :func:`fit`)
    -> (checkpoint folder, fingerprint, checkpoint or None, skipped-checkpoint messages). A fresh run writes
    ``fingerprint.json``."""
    from ..training.pretrain import fingerprint, select_checkpoint

    ckdir = Path(checkpoint_dir)
    ckdir.mkdir(parents=True, exist_ok=True)
    fp = fingerprint({"model": config, "train": dataclasses.asdict(settings), **(fingerprint_extra or {})},
                     fingerprint_files)
    resume, problems = select_checkpoint(ckdir, fp, cleanup=True)
    for problem in problems:
        log.warning("%s", problem)
    if resume is None:
        write_json(ckdir / "fingerprint.json", {"fingerprint": fp, "config": config,
                                                "train": dataclasses.asdict(settings)})
    else:
        log.info("resuming from %s", resume)
    return ckdir, fp, resume, problems


def fit(config: dict, settings: TrainSettings, x_train: torch.Tensor, cond_train: dict, x_val: torch.Tensor,
        cond_val: dict, checkpoint_dir, fingerprint_files: Sequence = (), fingerprint_extra: dict | None = None,
        init: Callable | None = None, callbacks: Sequence = (), fold: int = 0,
        counts_train: torch.Tensor | None = None, counts_val: torch.Tensor | None = None):
    """Train one model (all phases) with checkpoints/resume -> (EMA model, eval mode, CPU; history; summary).

    Parameters
    ----------
    config : dict
        ``DiffusionConfig`` fields (:func:`build_config`).
    settings : TrainSettings
        The optimisation settings.
    x_train, x_val : torch.Tensor
        float [N, G] standardised log expression of the training / validation cells (``x_val`` may be empty).
    cond_train, cond_val : dict
        Their condition dicts (:func:`conditions`).
    checkpoint_dir : str or Path
        Per-epoch checkpoints and ``fingerprint.json``; a checkpoint with the same fingerprint is resumed.
    fingerprint_files, fingerprint_extra : sequence of paths, dict or None
        Input files and extra settings hashed into the fingerprint with ``config`` and ``settings``.
    init, callbacks : callable or None, sequence
        ``init(model)`` on the new model (:func:`set_gene_init`); extra Lightning callbacks.
    fold : int
        Fold id of the metric rows and summary; Lightning is seeded with ``settings.seed + 1000 * fold``.
    counts_train, counts_val : torch.Tensor or None
        float [N, G] raw counts of the same cells (nb/zinb models; ``counts_train`` also sets the dispersion).

    Returns
    -------
    tuple
        (EMA model, eval mode, CPU; metric rows per epoch (:data:`METRIC_COLUMNS`); summary dict: device,
        precision, checkpoint resumed from, seconds, cells, steps, EMA updates, parameters).
    """
    from ..training.pretrain import quiet_lightning

    pl = _lightning()
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckdir, fp, resume, problems = _resume_point(config, settings, checkpoint_dir, fingerprint_files,
                                                fingerprint_extra)
    _set_threads()
    pl.seed_everything(settings.seed + 1000 * fold, workers=True, verbose=False)
    g = torch.Generator().manual_seed(settings.seed)
    n_scale = min(len(x_train), 2048)
    x_scale = x_train[torch.randperm(len(x_train), generator=g)[:n_scale]]
    train_dl = _loader(x_train, cond_train, settings.batch_size, settings.seed, True, counts_train)
    val_dl = _loader(x_val, cond_val, settings.batch_size, settings.seed, False, counts_val) if len(x_val) else None
    def start(model) -> None:
        """Initialise a freshly built model: the set-gene init ``init`` (if any) and, for nb/zinb models, the
        gene-wise dispersion from ``counts_train`` (:meth:`LatentDiffusion.init_dispersion`).
        """
        if init is not None:
            init(model)
        if model.config.counts:
            model.init_dispersion(counts_train)

    module = DiffusionModule(config, dataclasses.asdict(settings), x_scale, start, len(train_dl))
    module.run_fingerprint, module.fold = fp, fold
    total_epochs = sum(n for _, n in module.phases)
    cuda = torch.cuda.is_available()
    t0 = time.perf_counter()
    with quiet_lightning(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*validation_step.*no `val_dataloader`.*")
        trainer = pl.Trainer(
            max_epochs=total_epochs, accelerator="gpu" if cuda else "cpu", devices=1,
            precision="bf16-mixed" if cuda else "32-true", logger=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, deterministic=True if not cuda else "warn",
            gradient_clip_val=1.0, default_root_dir=str(ckdir), limit_val_batches=1.0 if val_dl else 0,
            callbacks=[ModelCheckpoint(dirpath=str(ckdir), filename="{epoch:03d}", save_last=True, save_top_k=1,
                                       every_n_epochs=1, enable_version_counter=False), *callbacks],
        )
        trainer.fit(module, train_dl, val_dl, ckpt_path=str(resume) if resume else None, weights_only=True)
    model = module.averaged_model()
    summary = {"fold": fold, "device": "cuda" if cuda else "cpu", "precision": "bf16-mixed" if cuda else "32-true",
               "resumed_from": str(resume) if resume else None, "skipped_checkpoints": problems,
               "fit_seconds": round(time.perf_counter() - t0, 2), "train_cells": int(len(x_train)),
               "val_cells": int(len(x_val)), "steps": int(trainer.global_step),
               "ema_updates": int(module.ema.n_averaged),
               "n_parameters": int(sum(p.numel() for p in model.parameters()))}
    return model, list(module.history), summary


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Architecture and training-mode options of the diffusion model (:func:`build_config`), overriding the
    ``preset`` of :class:`cellgraph.models.diffusion.DiffusionConfig`.

    Attributes
    ----------
    preset : ``DiffusionConfig`` preset, ``demo`` | ``paper`` (``--preset``, default ``"demo"``).
    n_tokens : latent tokens T per cell (``--n-tokens``, default 8).
    d_model : transformer width (``--d-model``, default 64).
    n_layers : denoiser layers (``--n-layers``, default 2).
    n_heads : attention heads (``--n-heads``, default 4).
    ae_hidden : hidden width of the autoencoder (``--ae-hidden``, default 256).
    conditioning : ``adaln`` | ``cross_attention`` (``--conditioning``, default ``adaln``).
    training_mode : ``two_stage`` | ``end_to_end`` (``--training-mode``, default ``two_stage``).
    prediction : ``v`` | ``eps`` (``--prediction``, default ``v``).
    schedule : noise schedule, ``cosine`` | ``linear`` (``--schedule``, default ``cosine``).
    cond_dropout : condition dropout probability for classifier-free guidance (``--cond-dropout``, default 0.1).
    likelihood : autoencoder observation model, ``nb`` | ``zinb`` | ``gaussian`` (``--likelihood``, default ``nb``).
    latent_dim : width of a latent token, 0 = ``d_model`` (``--latent-dim``, default 8).
    kl_weight : weight of KL(q(z|x) || N(0, I)), 0 = deterministic encoder (``--kl-weight``, default 0.1).
    feature_dropout : probability of dropping a set gene's features in training (``--feature-dropout``,
        default 0.0).
    """

    preset: str = "demo"
    n_tokens: int = 8
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    ae_hidden: int = 256
    conditioning: str = "adaln"
    training_mode: str = "two_stage"
    prediction: str = "v"
    schedule: str = "cosine"
    cond_dropout: float = 0.1
    likelihood: str = "nb"
    latent_dim: int = 8
    kl_weight: float = 0.1
    feature_dropout: float = 0.0


def build_config(options: ModelOptions, data: Data, n_genes: int, n_set_features: int = 0) -> dict:
    """The model configuration as a dict: ``DiffusionConfig.preset(options.preset)`` with the architecture and
    training-mode ``options`` and the condition sizes of ``data`` (PBMC: ``n_cell_types`` = its cell
    types; Papalexi: ``n_set_genes`` = its targets, ``n_set_features`` from :func:`set_gene_init`).

    Parameters
    ----------
    options : ModelOptions
        The preset and the architecture and training-mode fields that override it.
    data : Data
        Its ``dataset`` and ``vocab`` give the condition sizes.
    n_genes : int
        Genes modelled (G).
    n_set_features : int
        Papalexi: fixed features per set gene (0 = one learned row per gene).

    Returns
    -------
    dict
        Every ``DiffusionConfig`` field (``DiffusionConfig.to_dict``), as stored in ``model.pt``.

    Raises
    ------
    InputError
        If the preset is unknown or a value is rejected by :class:`DiffusionConfig`.
    """
    core = _model_core()
    over = dict(n_genes=n_genes, n_tokens=options.n_tokens, d_model=options.d_model, n_layers=options.n_layers,
                n_heads=options.n_heads, ae_hidden=options.ae_hidden, conditioning=options.conditioning,
                cond_dropout=options.cond_dropout, schedule=options.schedule, prediction=options.prediction,
                training_mode=options.training_mode, likelihood=options.likelihood, latent_dim=options.latent_dim,
                kl_weight=options.kl_weight, feature_dropout=options.feature_dropout)
    if data.dataset == "pbmc":
        over.update(n_cell_types=len(data.vocab), n_set_genes=0)
    else:
        over.update(n_cell_types=0, n_set_genes=len(data.vocab), n_set_features=n_set_features)
    try:
        cfg = core.DiffusionConfig.preset(options.preset, **over)
    except (TypeError, ValueError) as err:
        raise InputError(f"--preset {options.preset}: {err}") from err
    return cfg.to_dict()


def set_gene_init(data: Data, *, adata_path, set_features: str = "rwr", rwr_dim: int = 16,
                  gremln_init: bool = False, multigraph=None, gremln_model=None
                  ) -> tuple[Callable | None, dict, list[Path], int]:
    """How the set-gene embeddings start -> (init(model) or None, report, fingerprint files, n_set_features).

    PBMC has no set condition: no init.

    Parameters
    ----------
    data : Data
        The data set; its ``vocab`` are the targets (set genes).
    adata_path : str or Path
        The h5ad of ``data``: the first fingerprint file.
    set_features : str
        ``"rwr"`` (Papalexi): random-walk-with-restart features of every target on the full gene
        ``multigraph`` (:func:`cellgraph.graphs.gene_features.random_walk_features`), projected by one learned
        layer, so a held-out target is embedded by the same path as a trained one; ``"none"``: per-gene rows.
    rwr_dim : int
        RWR feature columns per walk graph.
    gremln_init : bool
        With ``set_features`` ``"none"``: rows initialised from the GREmLN gene embeddings of
        ``gremln_model`` where they cover the target.
    multigraph, gremln_model : str or Path, optional
        The gene multigraph (rwr) and the GREmLN ``model.pt`` (``gremln_init``).

    Returns
    -------
    tuple
        (``init(model)`` or None; report dict; fingerprint files: ``adata_path`` and the multigraph or GREmLN
        model read; ``n_set_features``: RWR feature columns, else 0).

    Raises
    ------
    InputError
        If the multigraph or the GREmLN model cannot be read.
    """
    files = [Path(adata_path)]
    if data.dataset != "papalexi":
        return None, ({"gremln_init": "ignored: PBMC has no perturbation-set condition"} if gremln_init else {}), \
            files, 0
    if set_features == "rwr":
        from ..graphs.multigraph import load_multigraph

        feat, _, rep = random_walk_features(load_multigraph(multigraph), data.vocab, dim=rwr_dim, seed=0)
        files.append(Path(multigraph))
        vec = torch.from_numpy(feat)
        report = {"set_features": "rwr", "n_set_features": int(feat.shape[1]), "random_walk_features": rep}
        return (lambda model: model.set_gene_features(vec)), report, files, int(feat.shape[1])
    if gremln_init:
        vec, known, report = gremln_vectors(gremln_model, data.vocab)
        files.append(Path(gremln_model))
        return (lambda model: model.init_set_gene_embeddings(vec, known)), report, files, 0
    return None, {}, files, 0


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and sd [G] of training cells x [N, G]; the sd is floored at a quarter of the median
    positive sd: a gene (almost) silent in the training cells would blow up the standardised values of the
    few other cells expressing it (PBMC HVGs of the held-out type have sd 0 in training).

    Parameters
    ----------
    x : np.ndarray
        Log expression [N, G] of the training cells.

    Returns
    -------
    tuple of np.ndarray
        (mean [G], sd [G], floored at max(0.25 * median positive sd, 1e-3); 1.0 when no gene varies).
    """
    mu, sd = x.mean(0), x.std(0)
    floor = 0.25 * float(np.median(sd[sd > 0])) if (sd > 0).any() else 1.0
    return mu, np.maximum(sd, max(floor, 1e-3))


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """Folds and set-gene options of a training run (:func:`run_train`; ``cellgraph diffusion --task train``).

    Attributes
    ----------
    n_folds : Papalexi: leave-perturbation-out folds (``--n-folds``, default 5).
    folds_run : Papalexi: folds trained, the first k (``--folds-run``, default 5).
    val_fraction : Papalexi: share of training cells kept for validation (``--val-fraction``, default 0.05).
    max_train_cells : train on a seeded subset of at most this many cells per fold, 0 = all
        (``--max-train-cells``, default 0).
    seed : seeds the folds and subsets (``--seed``, default 0).
    set_features : Papalexi: ``rwr`` (set genes embedded from random-walk features of the multigraph) | ``none``
        (``--set-features``, default ``rwr``).
    rwr_dim : random-walk feature columns per walk graph (``--rwr-dim``, default 16).
    gremln_init : Papalexi: initialise the set-gene embeddings from the GREmLN model (``--gremln-init``,
        default False).
    """

    n_folds: int = 5
    folds_run: int = 5
    val_fraction: float = 0.05
    max_train_cells: int = 0
    seed: int = 0
    set_features: str = "rwr"
    rwr_dim: int = 16
    gremln_init: bool = False


def run_train(params: TrainParams, options: ModelOptions, settings: TrainSettings, data: Data, *, adata_path,
              checkpoint_dir, out_dir: Path, multigraph=None, gremln_model=None) -> None:
    """``--task train``: train one model per fold (:func:`folds_of`, :func:`fit`) on ``data``.

    Writes to ``out_dir``: ``model.pt`` (config, training settings, genes, conditions, per-fold EMA state
    dicts, standardisation and library sizes, fold summaries, data report; plain containers, loadable with
    ``weights_only=True``) and ``metrics.tsv`` (``fold, epoch, phase, train_loss, val_loss, seconds``).

    Parameters
    ----------
    params : TrainParams
        Folds, training-cell subset and set-gene options.
    options : ModelOptions
        The architecture (:func:`build_config`).
    settings : TrainSettings
        The optimisation (:func:`fit`).
    data : Data
        The data set, loaded from ``adata_path``.
    adata_path : str or Path
        The h5ad of ``data`` (a fingerprint file).
    checkpoint_dir : str or Path
        Checkpoints go to ``checkpoint_dir/fold<k>``.
    out_dir : Path
        Folder of ``model.pt`` and ``metrics.tsv``.
    multigraph, gremln_model : str or Path, optional
        Read by :func:`set_gene_init`: the multigraph (``set_features`` rwr), the GREmLN model (``gremln_init``).

    Raises
    ------
    InputError
        On a bad preset or configuration, an unreadable multigraph or GREmLN model, or labels without a
        condition index.
    """
    t0 = time.time()
    folds = folds_of(data, params.n_folds, params.folds_run, params.seed, params.val_fraction,
                     params.max_train_cells)
    init, init_report, files, n_feat = set_gene_init(data, adata_path=adata_path, set_features=params.set_features,
                                                     rwr_dim=params.rwr_dim, gremln_init=params.gremln_init,
                                                     multigraph=multigraph, gremln_model=gremln_model)
    config = build_config(options, data, len(data.genes), n_feat)
    fold_states, fold_info, history, std = [], [], [], []
    counts = torch.from_numpy(data.counts) if data.counts is not None else None
    for f in folds:
        tr, va = f["train"], f["val"]
        mu, sd = standardisation(data.x[tr])
        xs = lambda idx: torch.from_numpy((data.x[idx] - mu) / sd).float()  # noqa: E731
        model, hist, summary = fit(
            config, settings, xs(tr), conditions(data, data.labels[tr]), xs(va), conditions(data, data.labels[va]),
            Path(checkpoint_dir) / f"fold{f['fold']}", fingerprint_files=files,
            fingerprint_extra={"dataset": data.dataset, "genes": data.genes, "fold": f["fold"],
                               "heldout": f["heldout"], "vocab": data.vocab, "n_folds": params.n_folds,
                               "val_fraction": params.val_fraction, "max_train_cells": params.max_train_cells,
                               "init": json.dumps(init_report, sort_keys=True, default=str)},
            init=init, fold=f["fold"], counts_train=None if counts is None else counts[tr],
            counts_val=None if counts is None else counts[va])
        fold_states.append(model.state_dict())
        lib = data.counts[tr].sum(1) if data.counts is not None else np.zeros(len(tr), np.float32)
        std.append({"mean": torch.from_numpy(mu), "sd": torch.from_numpy(sd), "library": torch.from_numpy(lib),
                    "library_labels": [str(v) for v in data.labels[tr]]})
        history += hist
        train_labels = sorted(set(data.labels[tr]) | set(data.labels[va]))
        fold_info.append({**summary, "heldout": f["heldout"], "train_labels": train_labels,
                          "train_cells_per_label": pd.Series(data.labels[tr]).value_counts().sort_index().to_dict()})
    meta = {"dataset": data.dataset, "vocab": data.vocab, "control": data.control, "label_key": data.label_key}
    if data.dataset == "pbmc":
        test = (data.split == "test") & np.isin(data.labels, data.vocab)
        meta["test_counts"] = {t: int((data.labels[test] == t).sum()) for t in data.vocab}
    obj = {"config": config, "train": dataclasses.asdict(settings), "genes": data.genes, "conditions": meta,
           "folds": fold_info, "fold_state_dicts": fold_states, "state_dict": fold_states[0], "standardise": std,
           "data_report": data.report, "init": init_report, "n_folds": params.n_folds,
           "seconds": round(time.time() - t0, 1)}
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save(plain_containers(obj), tmp)
    write_tsv(pd.DataFrame(history, columns=METRIC_COLUMNS), out_dir / "metrics.tsv", "%.6f")
    log.info("trained %d fold(s) in %.1f s", len(folds), time.time() - t0)


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


def plain_containers(obj):
    """``obj`` with numpy scalars as Python scalars and numpy arrays as (nested) lists (dicts, lists and
    tuples rebuilt), so that ``torch.load(weights_only=True)`` reads the saved file without unpickling code.

    Parameters
    ----------
    obj : object
        Any value; dicts, lists and tuples are walked recursively.

    Returns
    -------
    object
        The same structure; other values (tensors, str, ...) unchanged.
    """
    if isinstance(obj, dict):
        return {k: plain_containers(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain_containers(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return [plain_containers(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def load_models(path) -> tuple[dict, list]:
    """``model.pt`` -> (the stored dict, one LatentDiffusion per fold in eval mode).

    Parameters
    ----------
    path : str or Path
        ``model.pt`` of ``--task train`` (``--model-path``).

    Returns
    -------
    tuple
        (the stored dict (:func:`run_train`); list of LatentDiffusion with each fold's EMA weights, CPU, eval
        mode).

    Raises
    ------
    InputError
        If the file is missing or not a cellgraph diffusion ``model.pt`` (unreadable, or its config or state
        dicts do not build a model).
    """
    core = _model_core()
    path = require_file(path, "--model-path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        cfg = core.DiffusionConfig(**obj["config"])
        models = []
        for sd in obj["fold_state_dicts"]:
            m = core.LatentDiffusion(cfg)
            m.load_state_dict(sd)
            models.append(m.eval())
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001
        raise InputError(f"--model-path {path}: not a cellgraph diffusion model.pt ({type(err).__name__}: {err})") from err
    return obj, models


def sample_library(std: dict, labels: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """Library sizes float64 [len(labels)] drawn from the empirical distribution of the training cells' total
    counts of each label (a label without training cells, e.g. a held-out perturbation: all training cells).

    Parameters
    ----------
    std : dict
        One fold's ``standardise`` entry of ``model.pt``: ``library`` (total counts of each training cell
        [N]) and ``library_labels`` (their labels [N]).
    labels : sequence of str
        Condition of each cell to draw for.
    rng : np.random.Generator
        Draws with replacement.

    Returns
    -------
    np.ndarray
        float64 [len(labels)] library sizes (counts).
    """
    lib = np.asarray(std["library"], np.float64)
    lab = np.asarray(std["library_labels"])
    labels = np.asarray(list(labels))
    out = np.empty(len(labels))
    for label in np.unique(labels):
        pool = lib[lab == label]
        pool = pool if len(pool) else lib
        sel = labels == label
        out[sel] = rng.choice(pool, int(sel.sum()))
    return out


def generate_cells(model, meta: dict, std: dict, labels: Sequence[str], method: str, steps: int, eta: float,
                   guidance_scale: float, seed: int, batch: int = 1024) -> tuple[np.ndarray, np.ndarray | None]:
    """Generated cells for the condition ``labels`` -> (log expression float32 [n, G], counts float32 [n, G] or
    None). nb/zinb: latent from the diffusion model, library sizes from :func:`sample_library`, counts drawn
    from the decoder's NB/ZINB, then :func:`log_normalize` exactly as the real cells. gaussian: the decoded
    standardised expression mapped back and clipped at 0 (no counts).

    Parameters
    ----------
    model : LatentDiffusion
        One fold's model (eval mode).
    meta : dict
        The ``conditions`` entry of ``model.pt`` (``dataset``, ``vocab``, ``control``; :func:`conditions`).
    std : dict
        The fold's ``standardise`` entry: ``mean``, ``sd`` tensors [G] and the library sizes.
    labels : sequence of str
        Condition of each of the n cells.
    method, steps, eta : str, int, float
        Sampler (``ddim`` | ``ddpm``), DDIM steps and DDIM eta (0-1).
    guidance_scale : float
        Classifier-free guidance scale (1 = none).
    seed : int
        Seeds the torch noise generator and the numpy library-size/count draws.
    batch : int
        Cells per sampling call.

    Returns
    -------
    tuple
        (log1p(CP10k) float32 [n, G]; counts float32 [n, G] or None for gaussian).
    """
    _set_threads()
    g = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng([int(seed), 3])
    labels = list(labels)
    xs, cs = [], []
    for s in range(0, len(labels), batch):
        chunk = labels[s: s + batch]
        kw = dict(method=method, steps=steps, eta=eta, guidance_scale=guidance_scale, generator=g)
        if model.config.counts:
            u = model.sample_latent(conditions(meta, chunk), len(chunk), **kw)  # [n, T, L]
            lib = torch.from_numpy(sample_library(std, chunk, rng))
            cs.append(model.sample_counts(model.from_diffusion_space(u), lib, rng).numpy())
        else:
            xs.append(model.sample(conditions(meta, chunk), len(chunk), **kw).float().numpy())
    g_n = len(std["mean"])
    if model.config.counts:
        counts = np.concatenate(cs) if cs else np.zeros((0, g_n), np.float32)
        return log_normalize(counts), counts
    x = np.concatenate(xs) if xs else np.zeros((0, g_n), np.float32)
    x = x * std["sd"].numpy() + std["mean"].numpy()
    return np.clip(x, 0.0, None).astype(np.float32), None


def generate_paired(model, meta: dict, std: dict, conds: Sequence[str], n: int, method: str, steps: int,
                    eta: float, guidance_scale: float, seed: int) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """``n`` cells per condition of ``conds`` with common random numbers: every condition starts from the same
    initial noise and the same seeds of the count draws, so the difference of two conditions' generated means
    is the model's effect and not sampling noise (each condition's cells are still samples of its
    distribution).

    Parameters
    ----------
    model, meta, std, method, steps, eta, guidance_scale, seed
        As in :func:`generate_cells` (the same ``seed`` for every condition).
    conds : sequence of str
        The conditions.
    n : int
        Cells per condition.

    Returns
    -------
    tuple
        (log expression float32 [n * len(conds), G]; counts float32 [n * len(conds), G] or None; label of
        each cell, the conditions in order, n each).
    """
    xs, cs, labels = [], [], []
    for c in conds:
        x, cnt = generate_cells(model, meta, std, [c] * n, method, steps, eta, guidance_scale, seed)
        xs.append(x)
        cs.append(cnt)
        labels += [c] * n
    counts = np.concatenate(cs) if cs and cs[0] is not None else None
    return np.concatenate(xs), counts, labels


def generate(model, meta: dict, std: dict, labels: Sequence[str], method: str, steps: int, eta: float,
             guidance_scale: float, seed: int, batch: int = 1024) -> np.ndarray:
    """Generated log expression float32 [len(labels), G] for the condition ``labels`` (see generate_cells).

    Parameters
    ----------
    model, meta, std, labels, method, steps, eta, guidance_scale, seed, batch
        As in :func:`generate_cells`.

    Returns
    -------
    np.ndarray
        log1p(CP10k) float32 [len(labels), G].
    """
    return generate_cells(model, meta, std, labels, method, steps, eta, guidance_scale, seed, batch)[0]


def sample_plan(obj: dict, n_generate: int) -> list[tuple[int, list[str], list[bool]]]:
    """Per fold: the condition label of every generated cell and whether its label is held out.

    Parameters
    ----------
    obj : dict
        The ``model.pt`` dict (:func:`load_models`).
    n_generate : int
        Papalexi: cells per condition (control and every target) and fold.

    Returns
    -------
    list of tuple
        (position of the fold in ``obj["folds"]``, label per cell, held out per cell). PBMC: one entry with
        as many cells per type as real test cells, none held out.
    """
    meta = obj["conditions"]
    plan = []
    if meta["dataset"] == "pbmc":
        labels = [t for t in meta["vocab"] for _ in range(meta["test_counts"][t])]
        plan.append((0, labels, [False] * len(labels)))
        return plan
    for k, f in enumerate(obj["folds"]):
        conds = [meta["control"]] + list(meta["vocab"])
        labels = [c for c in conds for _ in range(n_generate)]
        plan.append((k, labels, [l in f["heldout"] for l in labels]))
    return plan


@dataclasses.dataclass(frozen=True)
class SampleParams:
    """Sampler options of ``cellgraph diffusion --task sample`` (:func:`run_sample`).

    Attributes
    ----------
    sampler : ``ddim`` | ``ddpm`` (all ``n_timesteps`` ancestral steps) (``--sampler``, default ``ddim``).
    ddim_steps : DDIM steps (``--ddim-steps``, default 25).
    eta : DDIM eta in [0, 1], 0 deterministic, 1 DDPM-like (``--eta``, default 0.0).
    guidance_scale : classifier-free guidance scale, 1 = none (``--guidance-scale``, default 1.0).
    n_generate : Papalexi: generated cells per perturbation and fold (``--n-generate``, default 500; PBMC
        generates as many cells per type as real test cells).
    seed : seeds the torch generator and each fold's sampling (fold k: seed + k) (``--seed``, default 0).
    """

    sampler: str = "ddim"
    ddim_steps: int = 25
    eta: float = 0.0
    guidance_scale: float = 1.0
    n_generate: int = 500
    seed: int = 0


def run_sample(params: SampleParams, *, dataset: str, model_path, out_dir: Path) -> None:
    """``--task sample``: generate cells with every fold's EMA model (:func:`sample_plan`).

    Reads ``model_path`` (``model.pt``, trained on ``dataset``) and writes ``out_dir/generated.h5ad``: ``X``
    float32 log1p CP10k over the model's genes, ``layers["counts"]`` the sampled counts (count models),
    ``obs`` the condition columns (PBMC: the label column; Papalexi: ``perturbation``, ``set_genes``, ``fold``, ``heldout``) plus ``sampler`` and
    ``guidance_scale``, ``uns["diffusion"]`` the sampler settings and seconds.

    Parameters
    ----------
    params : SampleParams
        Sampler, steps, eta, guidance scale, cells per perturbation and seed.
    dataset : str
        ``pbmc`` or ``papalexi`` (``--dataset``).
    model_path : str or Path
        ``model.pt`` of ``--task train``.
    out_dir : Path
        Folder of ``generated.h5ad``.

    Raises
    ------
    InputError
        If ``model.pt`` is missing or unreadable, it was trained on another ``dataset`` (``--dataset``), or
        ``params.n_generate`` < 1 for Papalexi.
    """
    import anndata as ad

    obj, models = load_models(model_path)
    meta = obj["conditions"]
    if meta["dataset"] != dataset:
        raise InputError(f"--model-path {model_path}: trained on {meta['dataset']!r}, not --dataset {dataset!r}")
    if meta["dataset"] == "papalexi" and params.n_generate < 1:
        raise InputError("--n-generate must be >= 1 for papalexi (cells per perturbation)")
    torch.manual_seed(params.seed)
    xs, cs, obs, t0 = [], [], [], time.perf_counter()
    for k, labels, held in sample_plan(obj, params.n_generate):
        fold_id = obj["folds"][k]["fold"]
        if meta["dataset"] == "pbmc":
            x, c = generate_cells(models[k], meta, obj["standardise"][k], labels, params.sampler, params.ddim_steps,
                                  params.eta, params.guidance_scale, params.seed + k)
        else:  # per condition, with common random numbers (sample_plan lists each condition's cells together)
            conds = list(dict.fromkeys(labels))
            x, c, _ = generate_paired(models[k], meta, obj["standardise"][k], conds, params.n_generate,
                                            params.sampler, params.ddim_steps, params.eta, params.guidance_scale,
                                            params.seed + k)
        xs.append(x)
        cs.append(c)
        if meta["dataset"] == "pbmc":
            obs.append(pd.DataFrame({meta["label_key"]: labels}))
        else:
            obs.append(pd.DataFrame({"perturbation": labels,
                                     "set_genes": ["" if l == meta["control"] else l for l in labels],
                                     "fold": fold_id, "heldout": held}))
    seconds = time.perf_counter() - t0
    obs_df = pd.concat(obs, ignore_index=True)
    for col in obs_df.columns:
        if obs_df[col].dtype == object and col != "set_genes":
            obs_df[col] = pd.Categorical(obs_df[col])
    obs_df["sampler"] = pd.Categorical([params.sampler] * len(obs_df))
    obs_df["guidance_scale"] = float(params.guidance_scale)
    obs_df.index = [f"gen{i}" for i in range(len(obs_df))]
    adata = ad.AnnData(X=np.concatenate(xs), obs=obs_df, var=pd.DataFrame(index=list(obj["genes"])))
    if all(c is not None for c in cs):
        import scipy.sparse as sp

        adata.layers["counts"] = sp.csr_matrix(np.concatenate(cs))
    adata.uns["diffusion"] = {"dataset": meta["dataset"], "sampler": params.sampler,
                              "steps": params.ddim_steps if params.sampler == "ddim" else int(obj["config"]["n_timesteps"]),
                              "eta": params.eta, "guidance_scale": params.guidance_scale, "seed": params.seed,
                              "seconds": round(seconds, 2), "cells": int(adata.n_obs),
                              "seconds_per_1000_cells": round(1000 * seconds / max(adata.n_obs, 1), 2)}
    with atomic_path(out_dir / "generated.h5ad") as tmp:
        adata.write_h5ad(tmp)
    log.info("generated %d cells in %.1f s (%s, guidance %.2f)", adata.n_obs, seconds, params.sampler,
             params.guidance_scale)


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def median_bandwidth(x: np.ndarray, y: np.ndarray) -> float:
    """Median of the pairwise distances of the pooled sample (off-diagonal), the RBF bandwidth heuristic.

    Parameters
    ----------
    x, y : np.ndarray
        Samples [n, d] and [m, d] in the same space (e.g. PCA coordinates).

    Returns
    -------
    float
        Median Euclidean distance over pairs of distinct rows of the pooled n + m rows; 1.0 when there is no
        pair or the median is 0.
    """
    z = np.vstack([x, y])
    d = np.sqrt(_sqdist(z, z))[np.triu_indices(len(z), 1)]
    h = float(np.median(d)) if d.size else 1.0
    return h if h > 0 else 1.0


def mmd_rbf(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None) -> float:
    """Squared MMD (biased V-statistic, 0 for identical samples) with k(a, b) = exp(-|a-b|^2 / (2 h^2)).

    Parameters
    ----------
    x, y : np.ndarray
        Samples [n, d] and [m, d] in the same space.
    bandwidth : float or None
        h, in the units of the coordinates; None = :func:`median_bandwidth` of x and y.

    Returns
    -------
    float
        MMD^2 >= 0 (clipped at 0).
    """
    h = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    k = lambda a, b: np.exp(-_sqdist(a, b) / (2.0 * h * h))  # noqa: E731
    return float(max(k(x, x).mean() + k(y, y).mean() - 2.0 * k(x, y).mean(), 0.0))


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| (V-statistic; 0 for identical samples).

    Parameters
    ----------
    x, y : np.ndarray
        Samples [n, d] and [m, d] in the same space (Euclidean distances).

    Returns
    -------
    float
        The energy distance, >= 0 (clipped at 0), in the units of the coordinates.
    """
    d = lambda a, b: np.sqrt(_sqdist(a, b)).mean()  # noqa: E731
    return float(max(2.0 * d(x, y) - d(x, x) - d(y, y), 0.0))


def c2st_auroc(x: np.ndarray, y: np.ndarray, seed: int = 0, n_splits: int = 5) -> float:
    """Classifier two-sample test: cross-validated AUROC of a random forest telling ``x`` from ``y``.

    0.5 = indistinguishable, 1 = perfectly separable; nan when a side has fewer than ``n_splits`` cells.

    Parameters
    ----------
    x, y : np.ndarray
        Samples [n, d] and [m, d] (``y`` is the positive class).
    seed : int
        Seeds the forest (100 trees, ``min_samples_leaf`` 2) and the shuffled folds.
    n_splits : int
        Folds of the stratified cross-validation (out-of-fold probabilities).

    Returns
    -------
    float
        AUROC in [0, 1], or nan.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    if min(len(x), len(y)) < n_splits:
        return float("nan")
    z = np.vstack([x, y])
    lab = np.r_[np.zeros(len(x)), np.ones(len(y))]
    clf = RandomForestClassifier(n_estimators=100, min_samples_leaf=2, random_state=seed, n_jobs=1)
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    prob = cross_val_predict(clf, z, lab, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(lab, prob))


def sparsity_metrics(gen: np.ndarray, real: np.ndarray) -> dict:
    """Zero and variance structure of log expression gen [n, G] vs real [m, G] (0 in log1p = a zero count).

    Parameters
    ----------
    gen, real : np.ndarray
        Generated [n, G] and real [m, G] log1p(CP10k) over the same genes.

    Returns
    -------
    dict of str to float
        ``zero_fraction`` / ``zero_fraction_real``: fraction (0-1) of zero entries; ``gene_zero_pearson``:
        Pearson over genes of the per-gene zero fraction; ``log_var_pearson``: Pearson over genes (mean and
        variance > 0 in both) of log per-gene variance, and ``mean_var_slope`` / ``mean_var_slope_real``: the
        least-squares slope of log variance on log mean over those genes (the mean-variance relation); the
        last three are nan with 2 or fewer such genes.
    """
    zg, zr = (gen == 0).mean(0), (real == 0).mean(0)  # [G]
    mg, mr, vg, vr = gen.mean(0), real.mean(0), gen.var(0), real.var(0)
    ok = (mg > 0) & (mr > 0) & (vg > 0) & (vr > 0)
    slope = lambda m, v: float(np.polyfit(np.log(m[ok]), np.log(v[ok]), 1)[0]) if ok.sum() > 2 else float("nan")  # noqa: E731
    return {"zero_fraction": float(zg.mean()), "zero_fraction_real": float(zr.mean()),
            "gene_zero_pearson": pearson(zg, zr),
            "log_var_pearson": pearson(np.log(vg[ok]), np.log(vr[ok])) if ok.sum() > 2 else float("nan"),
            "mean_var_slope": slope(mg, vg), "mean_var_slope_real": slope(mr, vr)}


def distribution_metrics(gen: np.ndarray, real: np.ndarray, pca, seed: int, c2st: bool = True) -> dict:
    """Pearson of the gene means; MMD, energy distance and C2ST AUROC in the PCA space ``pca``; and the
    :func:`sparsity_metrics`.

    Parameters
    ----------
    gen, real : np.ndarray
        Generated [n, G] and real [m, G] log expression over the same genes.
    pca : sklearn.decomposition.PCA
        Fitted on G genes (the real training cells); both samples are scored on its components.
    seed : int
        Seeds the C2ST (:func:`c2st_auroc`).
    c2st : bool
        False: skip the C2ST (``c2st_auroc`` nan).

    Returns
    -------
    dict of str to float
        ``pearson_mean``, ``mmd_rbf`` (:func:`mmd_rbf`), ``energy_distance``, ``c2st_auroc`` and the
        :func:`sparsity_metrics` keys.
    """
    pg, pr = pca.transform(gen), pca.transform(real)
    return {"pearson_mean": pearson(gen.mean(0), real.mean(0)), "mmd_rbf": mmd_rbf(pg, pr),
            "energy_distance": energy_distance(pg, pr),
            "c2st_auroc": c2st_auroc(pg, pr, seed) if c2st else float("nan"), **sparsity_metrics(gen, real)}


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    """Options of ``cellgraph diffusion --task evaluate`` (:func:`run_evaluate`).

    Attributes
    ----------
    ddim_steps : DDIM steps of the guidance curve and the timing (``--ddim-steps``, default 25).
    eta : DDIM eta in [0, 1] (``--eta``, default 0.0).
    guidance_scale : guidance scale of the timing runs (``--guidance-scale``, default 1.0).
    guidance_scales : guidance scales of the quality curve (``--guidance-scales``, default (1.0, 1.5, 2.0, 3.0)).
    curve_cells : cells per condition of the curve (``--curve-cells``, default 100).
    curve_seen : Papalexi: training perturbations in the curve (``--curve-seen``, default 5).
    timing_cells : cells timed per sampler (``--timing-cells``, default 32).
    n_pcs : PBMC: PCA components of the metrics (``--n-pcs``, default 20).
    scvi_epochs : PBMC: epochs of the scVI baseline, 0 = no scVI (``--scvi-epochs``, default 200).
    scvi_latent : PBMC: latent size of the scVI baseline (``--scvi-latent``, default 10).
    threads : torch CPU threads of the scVI baseline (``--threads``, default 1).
    seed : seeds PCA, reference draws, bootstrap, curve (seed + 17) and timing (``--seed``, default 0).
    """

    ddim_steps: int = 25
    eta: float = 0.0
    guidance_scale: float = 1.0
    guidance_scales: tuple = (1.0, 1.5, 2.0, 3.0)
    curve_cells: int = 100
    curve_seen: int = 5
    timing_cells: int = 32
    n_pcs: int = 20
    scvi_epochs: int = 200
    scvi_latent: int = 10
    threads: int = 1
    seed: int = 0


def _timing(model, meta, std, label: str, params: EvaluateParams) -> list[dict]:
    rows = []
    n = params.timing_cells
    for method, steps in (("ddim", params.ddim_steps), ("ddpm", int(model_cfg_steps(model)))):
        t0 = time.perf_counter()
        generate(model, meta, std, [label] * n, method, params.ddim_steps, params.eta, params.guidance_scale, params.seed)
        s = time.perf_counter() - t0
        rows.append({"sampler": method, "steps": steps, "cells": n, "seconds": round(s, 3),
                     "seconds_per_1000_cells": round(1000 * s / n, 2), "threads": torch.get_num_threads()})
    return rows


def model_cfg_steps(model) -> int:
    """Number of diffusion timesteps (``n_timesteps``) of ``model``'s noise schedule: the steps of DDPM sampling.

    Parameters
    ----------
    model : LatentDiffusion
        A trained or new model.

    Returns
    -------
    int
        Length of ``model.schedule.alphas_cumprod``.
    """
    return int(model.schedule.alphas_cumprod.shape[0])


def _check_generated(path, dataset: str, meta: dict, genes: list[str]):
    import anndata as ad

    path = require_file(path, "--generated")
    gen = ad.read_h5ad(path)
    col = meta["label_key"] if dataset == "pbmc" else "perturbation"
    need = [col] + (["fold", "heldout"] if dataset == "papalexi" else [])
    for c in need:
        if c not in gen.obs:
            raise InputError(f"--generated {path}: obs has no column {c!r}")
    if list(gen.var_names) != list(genes):
        raise InputError(f"--generated {path}: var_names differ from the model's {len(genes)} genes")
    return gen




def scvi_baseline(data: Data, std: dict, labels: list[str], out: Path, *, seed: int, n_latent: int,
                  max_epochs: int, threads: int) -> tuple[np.ndarray, dict]:
    """scVI (scvi-tools) fitted on the same training cells, sampled from its generative model for ``labels``
    with library sizes drawn as for the diffusion model -> (log expression [n, G], report); also written as
    ``out/baseline_scvi.h5ad`` (X log1p CP10k, layers["counts"], obs[label_key]).

    Parameters
    ----------
    data : Data
        PBMC data with ``counts``; scVI is fitted on its ``train`` cells of types in ``vocab``.
    std : dict
        The first fold's ``standardise`` entry of ``model.pt`` (its training library sizes).
    labels : list of str
        Cell type of each of the n cells to generate.
    out : Path
        Folder of ``baseline_scvi.h5ad``.
    seed, n_latent, max_epochs, threads : int
        Seeds the library draw and scVI; scVI latent size; epochs; torch threads.

    Returns
    -------
    tuple
        (log1p(CP10k) float32 [n, G]; the report of :func:`cellgraph.tl.scvi_baseline.scvi_generate`).

    References
    ----------
    Lopez et al. 2018, Nat. Methods 15:1053 (scVI).
    """
    import anndata as ad
    import scipy.sparse as sp

    from .scvi_baseline import scvi_generate

    train = (data.split == "train") & np.isin(data.labels, data.vocab)
    lib = sample_library(std, labels, np.random.default_rng([seed, 5]))
    counts, rep = scvi_generate(data.counts[train], data.labels[train], np.asarray(labels), lib,
                                n_latent=n_latent, max_epochs=max_epochs, seed=seed,
                                threads=threads)
    _set_threads()
    x = log_normalize(counts)
    a = ad.AnnData(X=x, obs=pd.DataFrame({data.label_key: pd.Categorical(labels)},
                                         index=[f"scvi{i}" for i in range(len(labels))]),
                   var=pd.DataFrame(index=data.genes))
    a.layers["counts"] = sp.csr_matrix(counts)
    a.uns["scvi"] = json.loads(json.dumps(rep, default=str))
    with atomic_path(out / "baseline_scvi.h5ad") as tmp:
        a.write_h5ad(tmp)
    return x, rep


def pbmc_table(data: Data, references: dict[str, tuple[np.ndarray, np.ndarray]], pca, seed: int) -> pd.DataFrame:
    """Per cell type and method: :func:`distribution_metrics` against the real test cells; ``mmd_over_floor``
    = MMD / the train-cells MMD of the type.

    Parameters
    ----------
    data : Data
        PBMC data (real train and test cells).
    references : dict
        Method -> (log expression [n, G], cell-type labels [n]), e.g. ``diffusion``, ``scvi``.
    pca : sklearn.decomposition.PCA
        Fitted on the real training cells.
    seed : int
        Seeds the ``train_cells`` / ``all_types`` draws and the metrics.

    Returns
    -------
    pd.DataFrame
        One row per (cell type, method), methods ``references`` plus ``train_cells`` and ``all_types``:
        ``cell_type``, ``method``, ``n_generated``, ``n_real_test``, the :func:`distribution_metrics` columns
        and ``mmd_over_floor``.
    """
    known = np.isin(data.labels, data.vocab)
    train, test = (data.split == "train") & known, (data.split == "test") & known
    rng = np.random.default_rng(seed)
    rows = []
    for t in data.vocab:
        real = data.x[test & (data.labels == t)]
        own, pool = np.flatnonzero(train & (data.labels == t)), np.flatnonzero(train)
        refs = {m: x[lab == t] for m, (x, lab) in references.items()}
        refs["train_cells"] = data.x[rng.choice(own, min(len(real), len(own)), replace=False)]
        refs["all_types"] = data.x[rng.choice(pool, min(len(real), len(pool)), replace=False)]
        for method, a in refs.items():
            if len(a) == 0:
                continue
            rows.append({"cell_type": t, "method": method, "n_generated": len(a), "n_real_test": len(real),
                         **distribution_metrics(a, real, pca, seed)})
    table = pd.DataFrame(rows)
    floor = table[table.method == "train_cells"].set_index("cell_type")["mmd_rbf"]
    table["mmd_over_floor"] = table["mmd_rbf"] / table["cell_type"].map(floor)
    return table


def pbmc_criteria(table: pd.DataFrame) -> pd.DataFrame:
    """The acceptance bar per cell type for the diffusion model: zero fraction within 2 points of real, per-gene
    zero-fraction Pearson >= 0.95, C2ST AUROC <= 0.65, MMD <= 2x the train-cells floor, MMD below scVI's.

    Parameters
    ----------
    table : pd.DataFrame
        :func:`pbmc_table` output with ``diffusion`` rows (``scvi`` rows optional).

    Returns
    -------
    pd.DataFrame
        One row per cell type: ``cell_type``, ``zero_fraction_gap`` (absolute, fraction 0-1),
        ``gene_zero_pearson``, ``c2st_auroc``, ``mmd_over_floor``, the bools ``zero_fraction_ok``,
        ``gene_zero_ok``, ``c2st_ok``, ``mmd_floor_ok`` and, with scVI rows, ``mmd_scvi`` and ``beats_scvi_mmd``.
    """
    d = table[table.method == "diffusion"].set_index("cell_type")
    rows = pd.DataFrame({"zero_fraction_gap": (d.zero_fraction - d.zero_fraction_real).abs(),
                         "gene_zero_pearson": d.gene_zero_pearson, "c2st_auroc": d.c2st_auroc,
                         "mmd_over_floor": d.mmd_over_floor})
    rows["zero_fraction_ok"] = rows.zero_fraction_gap <= 0.02
    rows["gene_zero_ok"] = rows.gene_zero_pearson >= 0.95
    rows["c2st_ok"] = rows.c2st_auroc <= 0.65
    rows["mmd_floor_ok"] = rows.mmd_over_floor <= 2.0
    if (table.method == "scvi").any():
        sv = table[table.method == "scvi"].set_index("cell_type")["mmd_rbf"]
        rows["mmd_scvi"] = sv
        rows["beats_scvi_mmd"] = d.mmd_rbf < sv
    return rows.reset_index()


def evaluate_pbmc(params: EvaluateParams, data: Data, obj: dict, models: list, gen, out: Path, report: dict) -> None:
    """PBMC evaluation: generated vs real test cells per cell type, with references, curves and figures.

    Fits a PCA (``params.n_pcs``) on the real training cells and scores the generated cells ``gen`` and the
    references (``scvi`` when ``params.scvi_epochs`` > 0, ``train_cells``, ``all_types``) with
    :func:`pbmc_table`. Writes to ``out``: ``evaluation.tsv``, ``summary.tsv`` (mean over types per method),
    ``criteria.tsv`` (:func:`pbmc_criteria`), ``guidance.tsv`` and ``guidance.png`` (quality vs
    ``params.guidance_scales``), ``sampling_time.tsv`` (DDIM vs DDPM), ``umap.png`` and, with scVI,
    ``baseline_scvi.h5ad``. Adds the tables to ``report`` in place.

    Parameters
    ----------
    params : EvaluateParams
        Evaluation options.
    data : Data
        The PBMC data, with the model's genes.
    obj, models : dict, list
        ``model.pt`` and its per-fold models (:func:`load_models`; the first fold is used).
    gen : anndata.AnnData
        ``generated.h5ad`` (X log expression, obs label column).
    out : Path
        Output folder.
    report : dict
        Updated in place.
    """
    from sklearn.decomposition import PCA

    meta, std = obj["conditions"], obj["standardise"][0]
    known = np.isin(data.labels, data.vocab)
    train, test = (data.split == "train") & known, (data.split == "test") & known
    n_pcs = min(params.n_pcs, len(data.genes), int(train.sum()) - 1)
    pca = PCA(n_components=n_pcs, random_state=params.seed).fit(data.x[train])
    glab = gen.obs[meta["label_key"]].astype(str).to_numpy()
    gx = gen.X.toarray() if hasattr(gen.X, "toarray") else np.asarray(gen.X)
    report["types_not_generated"] = sorted(set(data.vocab) - set(glab))
    refs = {"diffusion": (gx, glab)}
    if params.scvi_epochs and data.counts is not None:
        t0 = time.perf_counter()
        sx, report["scvi"] = scvi_baseline(data, std, list(glab), out, seed=params.seed,
                                                   n_latent=params.scvi_latent, max_epochs=params.scvi_epochs,
                                                   threads=params.threads)
        report["scvi"]["seconds_total"] = round(time.perf_counter() - t0, 1)
        refs["scvi"] = (sx, glab)
    table = pbmc_table(data, refs, pca, params.seed)
    write_tsv(table, out / "evaluation.tsv", "%.4g")
    cols = ["pearson_mean", "mmd_rbf", "mmd_over_floor", "energy_distance", "c2st_auroc", "zero_fraction",
            "zero_fraction_real", "gene_zero_pearson", "log_var_pearson", "mean_var_slope", "mean_var_slope_real"]
    summary = table.groupby("method", sort=False)[cols].mean()
    write_tsv(summary.reset_index(), out / "summary.tsv", "%.4g")
    criteria = pbmc_criteria(table)
    write_tsv(criteria, out / "criteria.tsv", "%.4g")
    curve = []
    for s in params.guidance_scales:  # guidance scale vs quality (DDIM, as many cells per type as test cells, capped)
        labels = [t for t in data.vocab for _ in range(min(meta["test_counts"][t], params.curve_cells))]
        x = generate(models[0], meta, std, labels, "ddim", params.ddim_steps, params.eta, s, params.seed + 17)
        lab = np.array(labels)
        per = [distribution_metrics(x[lab == t], data.x[test & (data.labels == t)], pca, params.seed, c2st=False)
               for t in data.vocab]
        curve.append({"guidance_scale": s, **{k: float(np.nanmean([p[k] for p in per]))
                                              for k in ("pearson_mean", "mmd_rbf", "energy_distance", "zero_fraction")}})
    curve = pd.DataFrame(curve)
    write_tsv(curve, out / "guidance.tsv", "%.4g")
    timing = pd.DataFrame(_timing(models[0], meta, std, data.vocab[0], params))
    write_tsv(timing, out / "sampling_time.tsv", "%.4g")
    _umap_figure(data.x[test], data.labels[test], gx, glab, out / "umap.png", params.seed)
    _guidance_figure(curve, ["mmd_rbf", "pearson_mean"], out / "guidance.png", "PBMC: mean over cell types")
    report.update(evaluation=table.to_dict("records"), summary=summary.reset_index().to_dict("records"),
                  criteria=criteria.to_dict("records"), guidance=curve.to_dict("records"),
                  sampling_time=timing.to_dict("records"), real_test_cells=int(test.sum()),
                  generated_cells=int(len(gx)), n_pcs=n_pcs)
    log.info("PBMC evaluation:\n%s\ncriteria:\n%s", summary.to_string(), criteria.to_string(index=False))


def papalexi_table(data: Data, obj: dict, gen, seed: int) -> tuple[pd.DataFrame, dict]:
    """One row per (fold, perturbation, method): Pearson (``pearson_delta``), Spearman, Pearson on the 20
    top DE genes and MSE of the predicted against the observed mean change (all cells of p minus all control
    cells), with the perturbation's split-half ``reliability`` and ``noise_ceiling``
    (:func:`cellgraph.tl.perturb_eval.split_half_reliability`, :func:`~cellgraph.tl.perturb_eval.noise_ceiling`).
    Methods: ``diffusion`` (generated S={p} mean minus generated control mean), ``train_mean_change`` (the
    mean observed change of the fold's training perturbations) and ``no_change``.

    Parameters
    ----------
    data : Data
        The Papalexi data (observed log expression).
    obj : dict
        The ``model.pt`` dict (folds, held-out and training labels).
    gen : anndata.AnnData
        ``generated.h5ad`` (obs ``perturbation``, ``fold``).
    seed : int
        Seeds the split halves; the table's ``seed`` column.

    Returns
    -------
    tuple
        (the table; {perturbation: observed mean change [G] in log expression}).

    Raises
    ------
    InputError
        If a fold has no generated control cell.
    """
    from .perturb_eval import noise_ceiling, split_half_reliability, top_de_genes

    meta = obj["conditions"]
    ctrl = data.labels == data.control
    mu0 = data.x[ctrl].mean(0)
    observed = {p: data.x[data.labels == p].mean(0) - mu0 for p in data.vocab}
    rel = {p: split_half_reliability(data.x[data.labels == p], data.x[ctrl], seed=seed) for p in data.vocab}
    top = {p: top_de_genes(data.x[data.labels == p], data.x[ctrl]) for p in data.vocab}
    glab = gen.obs["perturbation"].astype(str).to_numpy()
    gfold = gen.obs["fold"].to_numpy(int)
    gx = gen.X.toarray() if hasattr(gen.X, "toarray") else np.asarray(gen.X)
    rows = []
    for f in obj["folds"]:
        sel = gfold == f["fold"]
        if not (sel & (glab == meta["control"])).any():
            raise InputError(f"--generated: fold {f['fold']} has no generated control cell")
        g0 = gx[sel & (glab == meta["control"])].mean(0)
        mean_change = np.mean([observed[p] for p in f["train_labels"] if p != meta["control"]], 0)
        for p in data.vocab:
            gp = sel & (glab == p)
            if not gp.any():
                continue
            obs_d = observed[p]
            for method, yhat in (("diffusion", gx[gp].mean(0) - g0), ("no_change", np.zeros_like(obs_d)),
                                 ("train_mean_change", mean_change)):
                r, rho = pearson_spearman(yhat, obs_d)
                rows.append({"seed": seed, "fold": f["fold"], "perturbation": p,
                             "set": "heldout" if p in f["heldout"] else "seen",
                             "heldout": p in f["heldout"], "n_cells_real": int((data.labels == p).sum()),
                             "n_generated": int(gp.sum()), "method": method, "pearson_delta": r, "spearman": rho,
                             "pearson_delta_top20": pearson(yhat[top[p]], obs_d[top[p]]),
                             "mse": float(np.mean((yhat - obs_d) ** 2)), "reliability": rel[p],
                             "noise_ceiling": noise_ceiling(rel[p])})
    return pd.DataFrame(rows), observed


def evaluate_papalexi(params: EvaluateParams, data: Data, obj: dict, models: list, gen, out: Path, report: dict) -> None:
    """Papalexi evaluation: generated vs observed mean change per perturbation and fold, with baselines.

    Writes to ``out``: ``evaluation.tsv`` (:func:`papalexi_table`), ``summary.tsv`` (bootstrap CIs over
    perturbations per set and method), ``comparison.tsv`` (paired one-sided Wilcoxon, diffusion vs
    ``train_mean_change``), ``guidance.tsv`` and ``guidance.png`` (Pearson of held-out and seen perturbations
    of the first fold vs ``params.guidance_scales``), ``sampling_time.tsv`` and ``perturbation.png``. Adds the
    tables to ``report`` in place.

    Parameters
    ----------
    params : EvaluateParams
        Evaluation options.
    data : Data
        The Papalexi data, with the model's genes.
    obj, models : dict, list
        ``model.pt`` and its per-fold models (:func:`load_models`; the curve and timing use the first fold).
    gen : anndata.AnnData
        ``generated.h5ad``.
    out : Path
        Output folder.
    report : dict
        Updated in place.

    Raises
    ------
    InputError
        If a fold has no generated control cell (:func:`papalexi_table`).
    """
    from .perturb_eval import paired_comparison, summarize

    meta = obj["conditions"]
    table, observed = papalexi_table(data, obj, gen, params.seed)
    write_tsv(table, out / "evaluation.tsv", "%.4g")
    summary = summarize(table, ["set", "method"], seed=params.seed)
    write_tsv(summary, out / "summary.tsv", "%.4g")
    comparison = paired_comparison(table, "diffusion", ["train_mean_change"], by="set")
    write_tsv(comparison, out / "comparison.tsv", "%.4g")
    report["comparison"] = comparison.to_dict("records")
    f0 = obj["folds"][0]
    seen = [p for p in f0["train_labels"] if p != meta["control"]][: params.curve_seen]
    curve = []
    for s in params.guidance_scales:
        conds = [meta["control"]] + list(f0["heldout"]) + seen
        x, _, labels = generate_paired(models[0], meta, obj["standardise"][0], conds, params.curve_cells, "ddim",
                                       params.ddim_steps, params.eta, s, params.seed + 17)
        lab = np.array(labels)
        g0 = x[lab == meta["control"]].mean(0)
        r = {p: pearson(x[lab == p].mean(0) - g0, observed[p]) for p in conds[1:]}
        curve.append({"guidance_scale": s, "pearson_heldout": float(np.nanmean([r[p] for p in f0["heldout"]])),
                      "pearson_seen": float(np.nanmean([r[p] for p in seen])) if seen else float("nan")})
    curve = pd.DataFrame(curve)
    write_tsv(curve, out / "guidance.tsv", "%.4g")
    timing = pd.DataFrame(_timing(models[0], meta, obj["standardise"][0], meta["control"], params))
    write_tsv(timing, out / "sampling_time.tsv", "%.4g")
    _perturbation_figure(table, out / "perturbation.png")
    _guidance_figure(curve, ["pearson_heldout", "pearson_seen"], out / "guidance.png",
                     "Papalexi: Pearson of generated vs observed mean change")
    report.update(evaluation=table.to_dict("records"), summary=summary.to_dict("records"),
                  guidance=curve.to_dict("records"), sampling_time=timing.to_dict("records"),
                  generated_cells=int(gen.n_obs))
    log.info("Papalexi summary:\n%s\ncomparison:\n%s", summary.to_string(index=False),
             comparison.to_string(index=False))


def _umap_figure(xr, lr, xg, lg, path: Path, seed: int) -> None:
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    a = ad.AnnData(X=np.vstack([xr, xg]).astype(np.float32))
    a.obs["type"] = np.r_[lr, lg]
    a.obs["source"] = ["real"] * len(xr) + ["generated"] * len(xg)
    sc.pp.pca(a, n_comps=min(30, a.n_vars - 1, a.n_obs - 1), random_state=seed)
    sc.pp.neighbors(a, n_neighbors=15, random_state=seed)
    sc.tl.umap(a, random_state=seed)
    emb = a.obsm["X_umap"]
    types = sorted(set(a.obs["type"]))
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharex=True, sharey=True)
    for ax, src in zip(axes, ["real", "generated"]):
        ax.scatter(emb[:, 0], emb[:, 1], s=3, c="#dddddd", rasterized=True)
        for i, t in enumerate(types):
            m = (a.obs["source"].to_numpy() == src) & (a.obs["type"].to_numpy() == t)
            ax.scatter(emb[m, 0], emb[m, 1], s=5, color=cmap(i % 10), label=t, rasterized=True)
        ax.set_title(f"{src} ({'test' if src == 'real' else 'diffusion'} cells)")
        ax.set_xlabel("UMAP 1")
    axes[0].set_ylabel("UMAP 2")
    axes[1].legend(markerscale=3, fontsize=8, loc="best")
    fig.suptitle("PBMC: real test and generated cells (joint UMAP), coloured by cell type")
    save_figure(fig, path, bbox_inches="tight")


def _guidance_figure(curve: pd.DataFrame, cols: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cols), figsize=(4.5 * len(cols), 3.6))
    for ax, c in zip(np.atleast_1d(axes), cols):
        ax.plot(curve["guidance_scale"], curve[c], "o-")
        ax.set_xlabel("guidance scale")
        ax.set_ylabel(c)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, bbox_inches="tight")


def _perturbation_figure(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held = table[table["heldout"]]
    perts = sorted(held["perturbation"].unique())
    methods = ["diffusion", "train_mean_change", "no_change"]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(perts) + 4), 4))
    w = 0.8 / len(methods)
    for ax, metric in zip(axes, ["pearson_delta", "mse"]):
        for j, m in enumerate(methods):
            v = [held[(held.perturbation == p) & (held.method == m)][metric].mean() for p in perts]
            ax.bar(np.arange(len(perts)) + j * w, np.nan_to_num(v), w, label=m)
        ax.set_xticks(np.arange(len(perts)) + w, perts, rotation=45, ha="right")
        ax.set_ylabel(f"{metric} (mean change vs observed)")
        ax.axhline(0, color="k", lw=0.5)
    axes[0].legend(fontsize=8)
    fig.suptitle("Papalexi: held-out perturbations (no_change has no Pearson)")
    fig.tight_layout()
    save_figure(fig, path, bbox_inches="tight")


def run_evaluate(params: EvaluateParams, data: Data, *, dataset: str, adata_path, model_path, generated,
                 out_dir: Path) -> None:
    """``--task evaluate``: score the generated cells against the real ones.

    Reads ``model_path`` (``model.pt``), ``generated`` (``generated.h5ad``) and ``data`` (loaded from
    ``adata_path``; data set ``dataset``), runs :func:`evaluate_pbmc` or :func:`evaluate_papalexi` (their
    tables and figures in ``out_dir``) and writes ``out_dir/report.json``; the paths are recorded in it as given.

    Parameters
    ----------
    params : EvaluateParams
        Evaluation options.
    data : Data
        The real cells, loaded from ``adata_path``.
    dataset : str
        ``pbmc`` or ``papalexi`` (``--dataset``).
    adata_path, model_path, generated : str or Path
        The h5ad of ``data``, ``model.pt`` and ``generated.h5ad``.
    out_dir : Path
        Output folder.

    Raises
    ------
    InputError
        If ``model.pt`` is unreadable or trained on another ``dataset``, its genes differ from those of
        ``data``, or ``generated.h5ad`` is missing, lacks a condition column or has other genes.
    """
    obj, models = load_models(model_path)
    meta = obj["conditions"]
    if meta["dataset"] != dataset:
        raise InputError(f"--model-path {model_path}: trained on {meta['dataset']!r}, not --dataset {dataset!r}")
    if list(obj["genes"]) != data.genes:
        raise InputError(f"--adata {adata_path}: genes differ from those the model was trained on "
                         f"({len(data.genes)} vs {len(obj['genes'])}; same --n-genes?)")
    gen = _check_generated(generated, dataset, meta, obj["genes"])
    report = {"dataset": dataset, "adata": str(adata_path), "model_path": str(model_path),
              "generated": str(generated), "data": data.report, "train": obj["folds"],
              "model_config": obj["config"], "train_settings": obj["train"], "init": obj.get("init", {}),
              "sampling": dict(gen.uns.get("diffusion", {})), "guidance_scales": list(params.guidance_scales)}
    if dataset == "pbmc":
        evaluate_pbmc(params, data, obj, models, gen, out_dir, report)
    else:
        evaluate_papalexi(params, data, obj, models, gen, out_dir, report)
    write_json(out_dir / "report.json", report)
