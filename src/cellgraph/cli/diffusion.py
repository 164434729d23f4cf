"""``cellgraph diffusion``: train, sample or evaluate the latent-token diffusion model.

Checks every option first (before anything is read), sets the torch thread count
(:func:`cellgraph.tl.diffusion.set_threads`), defaults ``--model-path`` and ``--generated`` to
``<out-dir>/model.pt`` and ``<out-dir>/generated.h5ad``, builds the parameter dataclasses of
:mod:`cellgraph.tl.diffusion` from the options and runs the ``--task``:

- ``train``: :func:`cellgraph.tl.diffusion.load_data`, then :func:`cellgraph.tl.diffusion.run_train` with
  :class:`~cellgraph.tl.diffusion.TrainParams`, :class:`~cellgraph.tl.diffusion.ModelOptions` and
  :class:`~cellgraph.tl.diffusion.TrainSettings` (``model.pt``, ``metrics.tsv``);
- ``sample``: :func:`cellgraph.tl.diffusion.run_sample` with :class:`~cellgraph.tl.diffusion.SampleParams`
  (``generated.h5ad``);
- ``evaluate``: :func:`cellgraph.tl.diffusion.load_data`, then :func:`cellgraph.tl.diffusion.run_evaluate`
  with :class:`~cellgraph.tl.diffusion.EvaluateParams` (tables, figures, ``report.json``);

all in ``--out-dir``. The methods are described in :mod:`cellgraph.tl.diffusion`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..tl import diffusion as dfn
from . import dataclass_from_args
from ..tl.diffusion import DATASETS, LIKELIHOODS, SAMPLERS, SET_FEATURES, TASKS


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``diffusion`` stage's command-line options (task, data, model, training, sampling) to ``p``."""
    p.add_argument("--task", required=True, help="train | sample | evaluate")
    p.add_argument("--dataset", required=True, help="pbmc (condition: cell type) | papalexi (perturbation set)")
    p.add_argument("--adata", default=None, help="PBMC results/expression/adata.h5ad or the Papalexi h5ad")
    p.add_argument("--model-path", default=None, help="model.pt (sample, evaluate; default <out-dir>/model.pt)")
    p.add_argument("--generated", default=None, help="generated.h5ad (evaluate; default <out-dir>/generated.h5ad)")
    p.add_argument("--checkpoint-dir", default=None, help="resumable checkpoints (train; not a declared output)")
    p.add_argument("--out-dir", required=True, help="results/diffusion/{dataset}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    _add_data_options(p)
    _add_model_options(p)
    _add_training_sampling_options(p)


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """The data options of :func:`configure_parser`."""
    p.add_argument("--n-genes", type=int, default=0, help="PBMC: top n HVGs by normalised dispersion; 0 = all HVGs")
    p.add_argument("--min-grna-frac", type=float, default=0.8, help="Papalexi: keep cells with top_grna_frac >= this")
    p.add_argument("--control", default="non-targeting", help="Papalexi: obs.perturbation of control cells")
    p.add_argument("--n-folds", type=int, default=5, help="Papalexi: leave-perturbation-out folds")
    p.add_argument("--folds-run", type=int, default=5, help="Papalexi: folds trained and evaluated (first k)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="Papalexi: training cells kept for validation")
    p.add_argument("--max-train-cells", type=int, default=0,
                   help="train on a seeded subset of at most this many cells per fold (0 = all)")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """The model options of :func:`configure_parser`."""
    p.add_argument("--preset", default="demo", help="model preset of DiffusionConfig (demo | paper)")
    p.add_argument("--n-tokens", type=int, default=8)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--ae-hidden", type=int, default=256)
    p.add_argument("--conditioning", default="adaln", help="adaln | cross_attention")
    p.add_argument("--training-mode", default="two_stage", help="two_stage | end_to_end")
    p.add_argument("--prediction", default="v", help="v | eps")
    p.add_argument("--schedule", default="cosine", help="cosine | linear")
    p.add_argument("--cond-dropout", type=float, default=0.1, help="condition dropout (classifier-free guidance)")
    p.add_argument("--likelihood", default="nb", help="autoencoder observation model: nb | zinb (counts) | gaussian")
    p.add_argument("--latent-dim", type=int, default=8, help="width of a latent token (0 = --d-model)")
    p.add_argument("--kl-weight", type=float, default=0.1,
                   help="weight of KL(q(z|x) || N(0, I)) (0 = deterministic encoder)")
    p.add_argument("--set-features", default="rwr",
                   help="Papalexi: rwr (set genes embedded from random-walk features on --multigraph) | none")
    p.add_argument("--multigraph", default=None, help="results/multigraph/human/multigraph.npz (--set-features rwr)")
    p.add_argument("--rwr-dim", type=int, default=16, help="random-walk feature columns per walk graph")
    p.add_argument("--feature-dropout", type=float, default=0.0,
                   help="training: probability of dropping a set gene's features (shrinks unseen genes to the average)")
    p.add_argument("--scvi-epochs", type=int, default=200, help="evaluate (PBMC): epochs of the scVI baseline (0 = no scVI)")
    p.add_argument("--scvi-latent", type=int, default=10, help="evaluate (PBMC): latent size of the scVI baseline")
    p.add_argument("--gremln-init", action=argparse.BooleanOptionalAction, default=False,
                   help="Papalexi: initialise the set-gene embeddings from --gremln-model")
    p.add_argument("--gremln-model", default=None, help="results/train/gremln/model.pt (with --gremln-init)")


def _add_training_sampling_options(p: argparse.ArgumentParser) -> None:
    """The training, sampling and evaluation options of :func:`configure_parser`."""
    p.add_argument("--ae-steps", type=int, default=1500,
                   help="two_stage: autoencoder optimiser steps (rounded up to whole epochs)")
    p.add_argument("--max-steps", type=int, default=3000,
                   help="diffusion (or end_to_end) optimiser steps (rounded up to whole epochs)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema-decay", type=float, default=0.995)
    # sampling and evaluation
    p.add_argument("--sampler", default="ddim", help="ddim | ddpm (all n_timesteps ancestral steps)")
    p.add_argument("--ddim-steps", type=int, default=25)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 deterministic, 1 DDPM-like)")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance (1 = none)")
    p.add_argument("--n-generate", type=int, default=500,
                   help="Papalexi: generated cells per perturbation (PBMC: as many per type as real test cells)")
    p.add_argument("--guidance-scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0],
                   help="evaluate: guidance scales of the quality curve")
    p.add_argument("--curve-cells", type=int, default=100, help="evaluate: cells per condition of the curve")
    p.add_argument("--curve-seen", type=int, default=5, help="evaluate (Papalexi): training perturbations in the curve")
    p.add_argument("--timing-cells", type=int, default=32, help="evaluate: cells timed per sampler")
    p.add_argument("--n-pcs", type=int, default=20, help="evaluate (PBMC): PCA components of the metrics")


def _validate(args: argparse.Namespace) -> None:
    """Raise InputError for an invalid option value or combination (before anything is read)."""
    if args.task not in TASKS:
        raise InputError(f"--task {args.task!r}: expected one of {', '.join(TASKS)}")
    if args.dataset not in DATASETS:
        raise InputError(f"--dataset {args.dataset!r}: expected one of {', '.join(DATASETS)}")
    if args.likelihood not in LIKELIHOODS:
        raise InputError(f"--likelihood {args.likelihood!r}: expected one of {', '.join(LIKELIHOODS)}")
    if args.set_features not in SET_FEATURES:
        raise InputError(f"--set-features {args.set_features!r}: expected one of {', '.join(SET_FEATURES)}")
    if args.set_features == "rwr" and args.gremln_init:
        raise InputError("--gremln-init initialises per-gene rows; it needs --set-features none")
    if not 0.0 <= args.feature_dropout <= 1.0:
        raise InputError(f"--feature-dropout must be in [0, 1], got {args.feature_dropout}")
    if args.kl_weight < 0 or args.latent_dim < 0:
        raise InputError(f"--kl-weight and --latent-dim must be >= 0, got {args.kl_weight}, {args.latent_dim}")
    if args.sampler not in SAMPLERS:
        raise InputError(f"--sampler {args.sampler!r}: expected one of {', '.join(SAMPLERS)}")
    for name in ("threads", "n_folds", "folds_run", "batch_size", "ddim_steps", "curve_cells", "timing_cells",
                 "n_pcs", "n_tokens", "d_model", "n_layers", "n_heads", "ae_hidden", "max_steps", "rwr_dim",
                 "scvi_latent"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("n_genes", "ae_steps", "n_generate", "curve_seen", "max_train_cells", "scvi_epochs"):
        if getattr(args, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.folds_run > args.n_folds:
        raise InputError(f"--folds-run {args.folds_run} exceeds --n-folds {args.n_folds}")
    if not 0.0 <= args.cond_dropout < 1.0:
        raise InputError(f"--cond-dropout must be in [0, 1), got {args.cond_dropout}")
    if not 0.0 <= args.val_fraction < 1.0:
        raise InputError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if not 0.0 <= args.eta <= 1.0:
        raise InputError(f"--eta must be in [0, 1], got {args.eta}")
    if args.guidance_scale < 0 or any(s < 0 for s in args.guidance_scales):
        raise InputError("--guidance-scale and --guidance-scales must be >= 0")
    if not args.lr > 0 or args.weight_decay < 0 or not 0.0 <= args.ema_decay < 1.0:
        raise InputError("--lr must be > 0, --weight-decay >= 0 and --ema-decay in [0, 1)")
    if args.task == "train" and args.training_mode == "two_stage" and args.ae_steps < 1:
        raise InputError("--ae-steps must be >= 1 with --training-mode two_stage")
    if args.task in ("train", "evaluate") and not args.adata:
        raise InputError(f"--task {args.task} needs --adata")
    if args.task == "train" and not args.checkpoint_dir:
        raise InputError("--task train needs --checkpoint-dir")
    if args.task == "train" and args.gremln_init and args.dataset == "papalexi" and not args.gremln_model:
        raise InputError("--gremln-init needs --gremln-model")
    if args.task == "train" and args.set_features == "rwr" and args.dataset == "papalexi" and not args.multigraph:
        raise InputError("--set-features rwr needs --multigraph (results/multigraph/human/multigraph.npz)")


def model_options(args: argparse.Namespace) -> dfn.ModelOptions:
    """:class:`cellgraph.tl.diffusion.ModelOptions` of the command-line options.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options of :func:`configure_parser` (checked by ``run`` first).

    Returns
    -------
    cellgraph.tl.diffusion.ModelOptions
        The model options, values as given.
    """
    return dataclass_from_args(dfn.ModelOptions, args)


def train_params(args: argparse.Namespace) -> dfn.TrainParams:
    """:class:`cellgraph.tl.diffusion.TrainParams` of the command-line options.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options of :func:`configure_parser` (checked by ``run`` first).

    Returns
    -------
    cellgraph.tl.diffusion.TrainParams
        The fold, validation, subset, seed and set-feature options, values as given.
    """
    return dataclass_from_args(dfn.TrainParams, args)


def train_settings(args: argparse.Namespace) -> dfn.TrainSettings:
    """:class:`cellgraph.tl.diffusion.TrainSettings` of the command-line options.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options of :func:`configure_parser` (checked by ``run`` first).

    Returns
    -------
    cellgraph.tl.diffusion.TrainSettings
        Optimiser steps, batch size, learning rate, weight decay, EMA decay and seed, values as given.
    """
    return dataclass_from_args(dfn.TrainSettings, args)


def sample_params(args: argparse.Namespace) -> dfn.SampleParams:
    """:class:`cellgraph.tl.diffusion.SampleParams` of the command-line options.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options of :func:`configure_parser` (checked by ``run`` first).

    Returns
    -------
    cellgraph.tl.diffusion.SampleParams
        Sampler, DDIM steps and eta, guidance scale, cells generated and seed, values as given.
    """
    return dataclass_from_args(dfn.SampleParams, args)


def evaluate_params(args: argparse.Namespace) -> dfn.EvaluateParams:
    """:class:`cellgraph.tl.diffusion.EvaluateParams` of the command-line options.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options of :func:`configure_parser` (checked by ``run`` first).

    Returns
    -------
    cellgraph.tl.diffusion.EvaluateParams
        The sampling, quality-curve, timing, PCA, scVI-baseline, thread and seed options, values as given.
    """
    return dataclass_from_args(dfn.EvaluateParams, args, guidance_scales=tuple(args.guidance_scales))


def run(args: argparse.Namespace) -> None:
    """``cellgraph diffusion``: train, sample or evaluate the latent-token diffusion model (module docstring).

    Checks every option first, sets the torch thread count (``--threads``), defaults ``--model-path`` and
    ``--generated`` to ``<out-dir>/model.pt`` and ``<out-dir>/generated.h5ad``, then runs the ``--task``:
    ``train`` (``model.pt``, ``metrics.tsv``), ``sample`` (``generated.h5ad``) or ``evaluate`` (tables,
    figures, ``report.json``), all in ``--out-dir``.

    Raises
    ------
    InputError
        On an invalid option value or combination (e.g. ``--task train`` without ``--adata`` or
        ``--checkpoint-dir``), or bad input files.
    """
    _validate(args)
    dfn.set_threads(args.threads)
    out = Path(args.out_dir)
    model_path = args.model_path or str(out / "model.pt")
    generated = args.generated or str(out / "generated.h5ad")
    if args.task == "sample":
        dfn.run_sample(sample_params(args), dataset=args.dataset, model_path=model_path, out_dir=out)
        return
    data = dfn.load_data(args.dataset, args.adata, n_genes=args.n_genes, min_grna_frac=args.min_grna_frac,
                         control=args.control)
    if args.task == "train":
        dfn.run_train(train_params(args), model_options(args), train_settings(args), data, adata_path=args.adata,
                      checkpoint_dir=args.checkpoint_dir, out_dir=out, multigraph=args.multigraph,
                      gremln_model=args.gremln_model)
    else:
        dfn.run_evaluate(evaluate_params(args), data, dataset=args.dataset, adata_path=args.adata,
                         model_path=model_path, generated=generated, out_dir=out)
