"""``cellgraph train``: masked rank modelling of a GREmLN (graph-diffusion attention) or vanilla transformer.

Checks the options, reads ``--tokens-dir`` (``train.npz``, ``val.npz``, ``vocab.tsv`` and, if present, the
corpus shard ``pretrain.npz``) and ``--coefficients`` (spectral ``coefficients.json``), then calls the
library :mod:`cellgraph.training.pretrain`: :func:`~cellgraph.training.pretrain.read_coefficients`,
:func:`~cellgraph.training.pretrain.shard_n_bins`, :func:`~cellgraph.training.pretrain.training_config`,
:func:`~cellgraph.training.pretrain.pretraining_cells`, :func:`~cellgraph.training.pretrain.fit` (checkpoints in
``--checkpoint-dir``) and :func:`~cellgraph.training.pretrain.write_model_and_metrics`. Rank 0 writes
``model.pt`` and ``metrics.tsv`` to ``--out-dir`` and ``report.json`` (sizes, timings, run summary) to
``--checkpoint-dir``.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import torch

from ..errors import InputError
from ..io import require_file, write_json
from ..io import shards as data
from ..models.gremln import DIFFUSE, PRESETS
from ..training import pretrain

log = logging.getLogger(__name__)

__all__ = ["configure_parser", "run"]


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``train`` stage's command-line options to ``p``."""
    p.add_argument("--tokens-dir", required=True, help="tokenize output (train.npz, val.npz, vocab.tsv)")
    p.add_argument("--coefficients", required=True, help="spectral coefficients.json (beta, Chebyshev weights)")
    p.add_argument("--model", required=True, choices=["gremln", "vanilla"],
                   help="gremln: heat-kernel query diffusion; vanilla: plain attention (ablation)")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="model/training preset (default demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, shuffling and masks (default 0)")
    p.add_argument("--max-epochs", type=int, default=None,
                   help="epochs (default: the preset's; demo 8 = config train.max_epochs)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="cells per batch (default: the preset's; demo 32 = config train.batch_size)")
    p.add_argument("--mask-rate", type=float, default=0.3, help="fraction of gene tokens masked (default 0.3)")
    p.add_argument("--diffuse", default="queries", choices=list(DIFFUSE),
                   help="what the heat kernel diffuses (GREmLN only): queries (paper eq. 4), queries+values, or "
                        "gated (queries, plus a learned per-head gate on (exp(-beta L) - I) V) (default queries)")
    p.add_argument("--gepc-weight", type=float, default=0.0,
                   help="weight of the cell-embedding objective: every vocabulary gene's bin (0 if not a token) "
                        "predicted from the CLS state alone (scGPT's GEPC; 0 = off, the default)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--pretrain-on", default="train+corpus", choices=["train+corpus", "corpus"],
                   help="cells of masked pretraining: the labelled train cells joined by the corpus shard "
                        "(pretrain.npz, if any; default), or the corpus alone, so that no cell of the evaluation "
                        "data set is seen in pretraining (the GREmLN paper's protocol, section 4.1)")
    p.add_argument("--devices", type=int, default=1,
                   help="processes (GPUs, or CPU processes) per node for data-parallel training (default 1)")
    p.add_argument("--num-nodes", type=int, default=1, help="nodes for data-parallel training (default 1)")
    p.add_argument("--checkpoint-every-n-steps", type=int, default=0,
                   help="also checkpoint every k optimiser steps inside an epoch, keeping 2 (default 0 = off)")
    p.add_argument("--checkpoint-dir", required=True, help="folder for resumable checkpoints (last.ckpt)")
    p.add_argument("--out-dir", required=True, help="folder for model.pt and metrics.tsv")


def _check_options(args: argparse.Namespace) -> None:
    """InputError for an out-of-range option of ``cellgraph train`` (counts >= 1, mask rate in (0, 1))."""
    for name, v in (("--max-epochs", args.max_epochs), ("--batch-size", args.batch_size),
                    ("--threads", args.threads), ("--devices", args.devices), ("--num-nodes", args.num_nodes)):
        if v is not None and v < 1:
            raise InputError(f"{name} must be >= 1, got {v}")
    if not 0.0 < args.mask_rate < 1.0:
        raise InputError(f"--mask-rate must be in (0, 1), got {args.mask_rate}")
    if not (args.gepc_weight >= 0 and math.isfinite(args.gepc_weight)):
        raise InputError(f"--gepc-weight must be a finite number >= 0, got {args.gepc_weight}")
    if args.checkpoint_every_n_steps < 0:
        raise InputError(f"--checkpoint-every-n-steps must be >= 0, got {args.checkpoint_every_n_steps}")


def run(args: argparse.Namespace) -> None:
    """``cellgraph train`` (module docstring): check, read, train with :func:`cellgraph.training.pretrain.fit`,
    write (rank 0 only).

    Raises
    ------
    InputError
        If an input file is missing or malformed (coefficients, token shards, vocabulary), the shards'
        ``n_bins`` differ, an option is out of range (``--max-epochs``, ``--batch-size``, ``--threads``,
        ``--devices``, ``--num-nodes`` < 1; ``--mask-rate`` outside (0, 1); ``--checkpoint-every-n-steps`` < 0),
        the batch size is not a multiple of ``--devices`` x ``--num-nodes``, a shard holds no cell, or
        ``--pretrain-on corpus`` finds no ``pretrain.npz``.
    """
    tokens = Path(args.tokens_dir)
    train_path = require_file(tokens / "train.npz", "train token shard")
    val_path = require_file(tokens / "val.npz", "val token shard")
    vocab_path = require_file(tokens / "vocab.tsv", "token vocabulary")
    coef_path = require_file(args.coefficients, "spectral coefficients")
    vocab = data.read_vocab(vocab_path)
    beta, coeffs = pretrain.read_coefficients(coef_path)
    n_bins = pretrain.shard_n_bins(train_path)
    if pretrain.shard_n_bins(val_path) != n_bins:
        raise InputError(f"{val_path}: n_bins differs from {train_path}")
    _check_options(args)
    config = pretrain.training_config(args.preset, attention=args.model, vocab_size=len(vocab), n_bins=n_bins,
                                      beta=beta, coefficients=coeffs, max_epochs=args.max_epochs,
                                      batch_size=args.batch_size, mask_rate=args.mask_rate, seed=args.seed,
                                      diffuse=args.diffuse, gepc_weight=args.gepc_weight)
    world = args.devices * args.num_nodes
    if config.batch_size % world:
        raise InputError(f"--batch-size {config.batch_size} must be a multiple of --devices x --num-nodes = {world}")
    train_ds, val_ds, n_labelled, shard_files = pretrain.pretraining_cells(tokens, n_bins, args.pretrain_on)
    torch.set_num_threads(args.threads)
    log.info("training %s (%s preset) on %d train / %d val cells, %d genes, K=%d", args.model, args.preset,
             len(train_ds), len(val_ds), len(vocab) - 2, config.chebyshev_order)
    # called through the module, so that a test (or a fault-injection script) may replace pretrain.fit
    model, history, summary = pretrain.fit(config, train_ds, val_ds, data.collate, args.checkpoint_dir,
                                           fingerprint_files=shard_files, devices=args.devices,
                                           num_nodes=args.num_nodes,
                                           checkpoint_every_n_steps=args.checkpoint_every_n_steps or None)
    if summary["global_rank"] != 0:
        return  # only rank 0 writes outputs
    pretrain.write_model_and_metrics(Path(args.out_dir), config, model, vocab, history)
    write_json(Path(args.checkpoint_dir) / "report.json", {
        "model": args.model, "preset": args.preset, "train_cells": len(train_ds), "val_cells": len(val_ds),
        "pretrain_on": args.pretrain_on, "labelled_train_cells": n_labelled,
        "pretrain_cells": len(train_ds) - n_labelled,
        "vocab_size": len(vocab), "n_bins": n_bins, "beta": beta, "chebyshev_order": config.chebyshev_order,
        "chebyshev_order_by_tolerance": len(coeffs) - 1,
        "chebyshev_max_order": PRESETS[args.preset].chebyshev_max_order,
        "epoch_seconds": [row["seconds"] for row in history], **summary,
    })
