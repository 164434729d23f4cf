r"""scVI as a baseline count generator for the evaluation of the cellgraph diffusion model.

:func:`scvi_generate` fits ``scvi.model.SCVI`` (scvi-tools) on raw training counts with the condition (e.g.
the cell type) as the decoder's covariate, then draws *new* cells from the fitted generative model, not
reconstructions of training cells. The generative process is the one of Lopez et al. 2018, "Deep generative
modeling for single-cell transcriptomics", Nature Methods 15:1053-1058 (Methods, "The scVI probabilistic
model")::

    z_n   ~ Normal(0, I)                     latent cell state, n_latent dimensions
    rho_n = f_w(z_n, s_n)                    decoder (softmax output): expected gene frequencies, sum_g = 1
    x_ng  ~ NB(l_n * rho_ng, theta_g)        counts; ZINB adds a zero-inflation gate f_h(z_n, s_n)

where ``s_n`` is the covariate (here the condition) and ``l_n`` the library size. For generation ``l_n`` is
given by the caller (``library_generate``, total counts over the G genes), so a generated cell has expected
total ``l_n``; scVI's ``module.generative`` takes it as ``log(l_n)``.

Units: counts in and out are raw UMI counts (whole numbers, float32 out); libraries are total counts per
cell over the G training genes. scvi-tools is imported inside the function only, so :mod:`cellgraph`
imports without it (``pip install 'cellgraph[workflow]'`` installs it).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings

import numpy as np
import scipy.sparse as sp

from ..errors import InputError

_CONDITION_KEY = "condition"
_QUIET_LOGGERS = ("scvi", "lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")


def _check_counts(counts_train) -> sp.csr_matrix:
    """Counts [N, G] (dense or scipy sparse) -> float32 CSR; raises InputError unless finite whole numbers >= 0."""
    if sp.issparse(counts_train):
        mat = sp.csr_matrix(counts_train)
        values = mat.data
    else:
        mat = np.asarray(counts_train)
        values = mat
    if mat.ndim != 2 or mat.shape[0] < 2 or mat.shape[1] < 1:
        raise InputError(f"counts_train: expected a 2-d array [N cells, G genes] with N >= 2, G >= 1; "
                         f"got shape {mat.shape}")
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)
            or values.dtype == bool):
        raise InputError(f"counts_train: expected numeric raw counts, got dtype {values.dtype}")
    values = values.astype(np.float64, copy=False)
    if not np.all(np.isfinite(values)):
        raise InputError("counts_train: expected finite raw counts, found NaN or inf")
    if values.size and values.min() < 0:
        raise InputError(f"counts_train: expected non-negative raw counts, found minimum {values.min():g}")
    if values.size and not np.all(values == np.round(values)):
        raise InputError("counts_train: expected raw counts (whole numbers), found non-integer values "
                         "(normalised or log-transformed data?)")
    return sp.csr_matrix(mat, dtype=np.float32)


def _check_inputs(counts_train, labels_train, labels_generate, library_generate, likelihood):
    """Validate everything; return (counts CSR, train labels, generate labels, library float64)."""
    counts = _check_counts(counts_train)
    n_cells = counts.shape[0]
    labels_train = np.asarray(labels_train).astype(str)
    if labels_train.shape != (n_cells,):
        raise InputError(f"labels_train: expected a 1-d array of {n_cells} labels (one per row of "
                         f"counts_train), got shape {labels_train.shape}")
    labels_generate = np.asarray(labels_generate).astype(str)
    if labels_generate.ndim != 1:
        raise InputError(f"labels_generate: expected a 1-d array [M], got shape {labels_generate.shape}")
    unseen = sorted(set(labels_generate.tolist()) - set(labels_train.tolist()))
    if unseen:
        raise InputError(f"labels_generate: labels not seen in labels_train: {unseen}")
    library = np.asarray(library_generate, dtype=np.float64)
    if library.shape != labels_generate.shape:
        raise InputError(f"library_generate: expected a 1-d array of {labels_generate.shape[0]} library "
                         f"sizes (one per label of labels_generate), got shape {library.shape}")
    if library.size and not (np.all(np.isfinite(library)) and library.min() > 0):
        raise InputError("library_generate: expected finite total counts > 0 for every generated cell")
    if likelihood not in ("nb", "zinb"):
        raise InputError(f"likelihood: expected 'nb' or 'zinb', got {likelihood!r}")
    return counts, labels_train, labels_generate, library


@contextlib.contextmanager
def _quiet_and_threads(threads: int):
    """scvi/lightning logging at WARNING, lightning's warnings (log interval, deprecations) ignored, torch at
    ``threads`` threads; all restored on exit."""
    import torch

    old_levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    old_threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"lightning|pytorch_lightning")
            for name in _QUIET_LOGGERS:
                logging.getLogger(name).setLevel(logging.WARNING)
            torch.set_num_threads(threads)
            yield
    finally:
        for name, level in old_levels.items():
            logging.getLogger(name).setLevel(level)
        torch.set_num_threads(old_threads)


def _sample(model, labels_generate, library, n_latent, seed, batch_size) -> np.ndarray:
    """Draw counts from the generative model: z ~ N(0, I), the label's batch code, log library; px.sample()."""
    import torch
    from scvi import REGISTRY_KEYS

    mapping = list(model.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping)
    code_of = {str(label): code for code, label in enumerate(mapping)}
    codes = np.array([code_of[label] for label in labels_generate], dtype=np.int64)
    module = model.module
    module.eval()
    out = np.zeros((len(codes), model.adata.n_vars), dtype=np.float32)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for start in range(0, len(codes), batch_size):
            stop = min(start + batch_size, len(codes))
            z = torch.randn(stop - start, n_latent)
            batch_index = torch.as_tensor(codes[start:stop]).unsqueeze(1)
            log_library = torch.log(torch.as_tensor(library[start:stop], dtype=torch.float32)).unsqueeze(1)
            px = module.generative(z=z, library=log_library, batch_index=batch_index)["px"]
            out[start:stop] = px.sample().cpu().numpy()
    return np.round(out)


def scvi_generate(counts_train, labels_train, labels_generate, library_generate, *, n_latent=10, max_epochs=200,
                  likelihood="nb", seed=0, threads=1, batch_size=128) -> tuple[np.ndarray, dict]:
    """Fit scVI on training counts with the condition as covariate and sample new cells per condition.

    Parameters
    ----------
    counts_train : int/float array or scipy sparse matrix [N, G]
        Raw counts (non-negative whole numbers) of the N training cells over G genes.
    labels_train : array of str [N]
        The condition (e.g. cell type) of each training cell.
    labels_generate : array of str [M]
        The condition of each cell to generate; each must occur in ``labels_train``.
    library_generate : float array [M]
        Library size (total counts over the G genes, > 0) of each generated cell, e.g. drawn from the training
        cells of its condition.
    n_latent, max_epochs, likelihood, seed, threads, batch_size
        scVI latent dimension; training epochs; ``"nb"`` or ``"zinb"`` (``gene_likelihood``); seed of scVI
        (``scvi.settings.seed``: sets the global numpy/torch/random seeds) and of the generation draws (a forked
        torch RNG, so the caller's torch RNG state is left alone); torch CPU threads (restored afterwards);
        minibatch size of training and of generation.

    Training: all N cells (``train_size=1.0``: without early stopping scVI never evaluates its 10% validation
    split), early stopping off, CPU, Adam at scVI's default learning rate, no progress bar. KL warm-up over the
    first ``max_epochs // 4`` epochs instead of scVI's default 400: generation samples z from the prior, so the
    model must end on the full ELBO (KL weight 1); with the default, a run of ``max_epochs < 400`` never reaches
    it (on the planted test data a 40-epoch fit with the default warm-up recovered ~70% of the planted log fold
    change, with the short warm-up ~100%). scVI's gene dispersion moves ~lr per Adam step, so small data sets
    need enough steps (epochs x N / batch_size, ~1000+) for theta and the zero fraction to settle.

    Returns
    -------
    counts : float32 array [M, G]
        Counts (whole numbers >= 0) drawn from NB/ZINB(l * rho, theta) with z ~ N(0, I), the label's covariate
        and l = ``library_generate`` (Lopez et al. 2018, Nature Methods, Methods: z ~ N(0, I),
        rho = f(z, s), x ~ NB(l * rho, theta)); row m is a new cell, not a reconstruction of a training cell.
    report : dict
        ``n_latent``, ``likelihood``, ``epochs`` (trained), ``train_loss``, ``elbo_train`` (negative ELBO per
        cell), ``reconstruction_loss_train``, ``kl_local_train`` (last epoch, those ``model.history`` has),
        ``seconds`` (fit + sampling), ``scvi_version``, ``n_train_cells``, ``n_genes``, ``n_generated``,
        ``conditions`` (scVI's code order), ``kl_warmup_epochs``, ``batch_size``, ``seed``.

    Covariate mechanism: the condition is registered as scVI's *batch* (``setup_anndata(batch_key=...)``).
    In ``SCVI`` the batch one-hot enters the decoder (``DecoderSCVI``, injected into its hidden layers) while the
    encoder does not see it (``encode_covariates=False``), so the condition is explained by the decoder
    f(z, s) and z carries the within-condition variation: exactly the conditional generator
    z ~ N(0, I), x ~ NB(l f(z, s), theta) wanted here. ``module.generative`` takes the batch code as its required
    ``batch_index`` argument (a categorical covariate would also reach the decoder, but through ``cat_covs``
    alongside a dummy single batch). Codes are taken from the model's registry
    (``adata_manager.get_state_registry("batch").categorical_mapping``), not from our own label order.

    Raises
    ------
    cellgraph.errors.InputError
        Wrong shapes; counts negative, non-finite or not whole numbers; labels_generate holding labels absent
        from labels_train (named in the message); library sizes <= 0 or non-finite; an unknown likelihood.
    """
    counts, labels_train, labels_generate, library = _check_inputs(
        counts_train, labels_train, labels_generate, library_generate, likelihood)
    import scvi

    started = time.perf_counter()
    kl_warmup = int(max_epochs) // 4
    with _quiet_and_threads(threads):
        model = _fit_scvi(counts, labels_train, n_latent, max_epochs, likelihood, seed, batch_size, kl_warmup)
        generated = _sample(model, labels_generate, library, n_latent, seed, batch_size)
        conditions = [str(c) for c in model.adata_manager.get_state_registry(
            scvi.REGISTRY_KEYS.BATCH_KEY).categorical_mapping]
    report = {"n_latent": int(n_latent), "likelihood": likelihood, "epochs": _epochs_trained(model),
              "seconds": round(time.perf_counter() - started, 2), "scvi_version": scvi.__version__,
              "n_train_cells": int(counts.shape[0]), "n_genes": int(counts.shape[1]),
              "n_generated": int(len(labels_generate)), "conditions": conditions,
              "kl_warmup_epochs": kl_warmup, "batch_size": int(batch_size), "seed": int(seed)}
    report.update(_last_history(model))
    return generated, report


def _fit_scvi(counts, labels_train, n_latent, max_epochs, likelihood, seed, batch_size, kl_warmup):
    """Fit ``scvi.model.SCVI`` on counts [N, G] (float32 CSR) with the labels [N] as its batch covariate, as
    :func:`scvi_generate` describes (all cells, no early stopping, CPU, KL warm-up over ``kl_warmup``
    epochs); sets scVI's verbosity and global seed. Returns the trained model."""
    import anndata as ad
    import pandas as pd
    import scvi

    scvi.settings.verbosity = logging.WARNING
    scvi.settings.seed = seed
    adata = ad.AnnData(X=counts.copy(), obs=pd.DataFrame(
        {_CONDITION_KEY: pd.Categorical(labels_train)}, index=[str(i) for i in range(counts.shape[0])]))
    adata.layers["counts"] = counts
    scvi.model.SCVI.setup_anndata(adata, layer="counts", batch_key=_CONDITION_KEY)
    model = scvi.model.SCVI(adata, n_latent=n_latent, gene_likelihood=likelihood)
    model.train(max_epochs=max_epochs, batch_size=batch_size, early_stopping=False, accelerator="cpu",
                devices=1, train_size=1.0, enable_progress_bar=False, enable_model_summary=False,
                datasplitter_kwargs={"drop_last": _drop_last(counts.shape[0], batch_size)},
                plan_kwargs={"n_epochs_kl_warmup": kl_warmup})
    return model


def _drop_last(n_cells: int, batch_size: int) -> bool:
    """Drop the last minibatch of an epoch when it would hold 1-2 cells (BatchNorm fails on one cell)."""
    return n_cells > batch_size and n_cells % batch_size in (1, 2)


def _epochs_trained(model) -> int:
    """Epochs trained: the number of per-epoch rows scVI logged in ``model.history``."""
    history = model.history or {}
    return int(max((len(frame) for frame in history.values()), default=0))


def _last_history(model) -> dict:
    """Last logged values of the training loss, ELBO and its terms from ``model.history`` (those present).

    All are per-cell means over the training cells (negative ELBO: lower is better; ``train_loss`` includes the
    KL warm-up weight, ``elbo_train`` does not)."""
    out = {}
    for key in ("train_loss", "elbo_train", "reconstruction_loss_train", "kl_local_train"):
        frame = (model.history or {}).get(key)
        values = frame.iloc[:, 0].dropna() if frame is not None else ()
        if len(values):
            out[key] = float(values.iloc[-1])
    return out
