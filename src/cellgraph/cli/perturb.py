"""``cellgraph perturb``: perturbation prediction with the cell graph transformers (forward, yeast, reverse, figures).

Checks the options, sets the torch thread count (``--threads``), builds the task's parameter dataclass and
calls the library with explicit paths:

- ``--task forward``: :class:`cellgraph.tl.perturb_forward.ForwardParams`,
  :func:`cellgraph.tl.perturb_forward.run_forward` (reads ``--adata``, ``--multigraph``, optionally
  ``--gremln-model``);
- ``--task yeast``: :class:`cellgraph.tl.perturb_yeast.YeastParams`, :func:`cellgraph.tl.perturb_yeast.run_yeast`
  (reads ``--pairs``, ``--smf``, ``--string-info``, ``--multigraph``);
- ``--task reverse``: :class:`cellgraph.tl.perturb.ReverseParams`, :func:`cellgraph.tl.perturb.run_reverse`
  (reads ``--adata`` and optionally ``--gremln-model``, ``--vanilla-model``, ``--grn-networks``);
- ``--task figures``: :func:`cellgraph.tl.perturb.run_figures` (reads ``--forward-dir``, ``--yeast-dir``,
  ``--reverse-dir``; writes ``--figures-dir`` and ``--tables-dir``).

The first three write their tables and ``report.json`` to ``--out-dir``. The ``--graph-reg`` entries are parsed
by :func:`cellgraph.tl.perturb.graph_reg_from_flags`. The methods are described in :mod:`cellgraph.tl.perturb`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..errors import InputError
from ..models import cell_graph_transformer as cgt
from ..tl import perturb as pt
from . import dataclass_from_args


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``perturb`` stage's command-line options (all tasks: forward, yeast, reverse, figures) to ``p``."""
    p.add_argument("--task", required=True, choices=pt.TASKS)
    p.add_argument("--adata", default=None, metavar="H5AD", help="Papalexi ECCITE-seq h5ad (forward, reverse)")
    p.add_argument("--multigraph", default=None, metavar="NPZ", help="multigraph.npz of the organism (forward, yeast)")
    p.add_argument("--pairs", default=None, metavar="CSV", help="Costanzo 2016 pairs (yeast)")
    p.add_argument("--smf", default=None, metavar="TSV",
                   help="Costanzo 2016 single-mutant fitness table, Data File S1 (yeast)")
    p.add_argument("--string-info", default=None, metavar="FILE", help="STRING protein.info of yeast (name -> ORF)")
    p.add_argument("--min-grna-frac", type=float, default=0.8, help="keep cells with top_grna_frac >= this")
    p.add_argument("--control", default="non-targeting", help="obs.perturbation label of control cells")
    p.add_argument("--preset", default="demo", choices=sorted(cgt.PRESETS))
    p.add_argument("--head", default="cross_attention", choices=["mean", "cross_attention", "hypersagnn"])
    p.add_argument("--graph-reg", nargs="*", default=["physical:0:0:0.1", "regulatory:1:1:0.1"],
                   metavar="GRAPH:LAYER:HEAD:LAMBDA", help="graph-regularised heads (graphs absent are reported)")
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--max-epochs", type=int, default=150,
                   help="forward: most full-batch steps over the training targets (early stopping picks fewer)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="forward: seeds (control halves, folds, initialisation), one whole CV per seed")
    p.add_argument("--eval-every", type=int, default=10, help="forward: inner validation every N epochs")
    p.add_argument("--inner-fraction", type=float, default=0.25,
                   help="forward: share of training targets held out for early stopping")
    p.add_argument("--reliable-threshold", type=float, default=0.6,
                   help="forward: split-half Pearson from which a perturbation counts as reliable")
    p.add_argument("--attend", default="targets_to_regulators", choices=["targets_to_regulators", "regulators_to_targets"],
                   help="forward: direction of directed graphs in the attention targets")
    p.add_argument("--rwr-dim", type=int, default=16, help="forward: SVD columns per random-walk feature block")
    p.add_argument("--n-pca", type=int, default=10, help="forward: PCA gene loadings (model features, linear baseline)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="forward: AdamW weight decay")
    p.add_argument("--dropout", type=float, default=0.0, help="forward: dropout of the cell graph transformer")
    p.add_argument("--label-scale", default="gene", choices=["gene", "global"],
                   help="forward: labels divided by each gene's sd over training targets, or by one overall sd")
    p.add_argument("--ridge", type=float, default=0.1, help="forward: ridge lambda of the linear baselines")
    p.add_argument("--diagnostics-every", type=int, default=10,
                   help="attention diagnostics after every N-th epoch and the last one")
    _configure_yeast_reverse_figures(p)


def _configure_yeast_reverse_figures(p: argparse.ArgumentParser) -> None:
    """The options after ``--diagnostics-every`` (yeast, reverse, figures and shared ones), in the same order."""
    p.add_argument("--yeast-max-epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--score-weight", type=float, default=0.1, help="task weight of the perturbation score")
    p.add_argument("--yeast-hops", type=int, default=1, help="neighbourhood of the phenotype genes (-1 = all)")
    p.add_argument("--n-top-perturbations", type=int, default=20)
    p.add_argument("--n-splits", type=int, default=3)
    p.add_argument("--gremln-model", default=None, metavar="PT")
    p.add_argument("--vanilla-model", default=None, metavar="PT")
    p.add_argument("--grn-networks", default=None, metavar="TSV.GZ", help="ARACNe networks.tsv.gz (reverse)")
    p.add_argument("--grn-cell-type", default="Monocyte", help="ARACNe network used as the cells' graph (reverse)")
    p.add_argument("--finetune-epochs", type=int, default=3,
                   help="reverse: epochs of fine-tuning GREmLN/vanilla with a classification head (0 = skip)")
    p.add_argument("--finetune-lr", type=float, default=1e-4, help="reverse: encoder learning rate (head: 10x)")
    p.add_argument("--forward-dir", default=None, help="figures: results of --task forward")
    p.add_argument("--yeast-dir", default=None, help="figures: results of --task yeast")
    p.add_argument("--reverse-dir", default=None, help="figures: results of --task reverse")
    p.add_argument("--figures-dir", default=None)
    p.add_argument("--tables-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", default=None, help="results folder (forward, yeast, reverse)")


def _need(args: argparse.Namespace, *names: str) -> None:
    """Raise InputError naming the first of the options ``names`` that ``--task`` needs and did not get."""
    for n in names:
        if getattr(args, n) in (None, ""):
            raise InputError(f"--task {args.task} needs --{n.replace('_', '-')}")


def forward_params(args: argparse.Namespace, graph_reg: dict):
    """:class:`cellgraph.tl.perturb_forward.ForwardParams` of the command-line options (``graph_reg`` parsed).

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options of :func:`configure_parser`.
    graph_reg : dict
        Graph name -> [layer, head, lambda], as :func:`cellgraph.tl.perturb.graph_reg_from_flags` parses
        ``--graph-reg``.

    Returns
    -------
    cellgraph.tl.perturb_forward.ForwardParams
        The ``--task forward`` settings (model, folds, epochs, seeds, features, baselines), values as given.
    """
    from ..tl.perturb_forward import ForwardParams

    return dataclass_from_args(ForwardParams, args, graph_reg=graph_reg, seeds=tuple(args.seeds))


def yeast_params(args: argparse.Namespace, graph_reg: dict):
    """:class:`cellgraph.tl.perturb_yeast.YeastParams` of the command-line options (``graph_reg`` parsed).

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options of :func:`configure_parser`.
    graph_reg : dict
        Graph name -> [layer, head, lambda], as :func:`cellgraph.tl.perturb.graph_reg_from_flags` parses
        ``--graph-reg``.

    Returns
    -------
    cellgraph.tl.perturb_yeast.YeastParams
        The ``--task yeast`` settings; ``max_epochs`` from ``--yeast-max-epochs``, ``hops`` from ``--yeast-hops``.
    """
    from ..tl.perturb_yeast import YeastParams

    return dataclass_from_args(YeastParams, args, graph_reg=graph_reg, max_epochs=args.yeast_max_epochs,
                               hops=args.yeast_hops)


def reverse_params(args: argparse.Namespace) -> pt.ReverseParams:
    """:class:`cellgraph.tl.perturb.ReverseParams` of the command-line options.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options of :func:`configure_parser`.

    Returns
    -------
    cellgraph.tl.perturb.ReverseParams
        The ``--task reverse`` settings (cell filter, top perturbations, splits, ARACNe cell type,
        fine-tuning epochs and learning rate, seed), values as given.
    """
    return dataclass_from_args(pt.ReverseParams, args)


def run(args: argparse.Namespace) -> None:
    """``cellgraph perturb``: run the ``--task`` (module docstring), writing to ``--out-dir``.

    ``forward`` reads ``--adata`` and ``--multigraph``; ``yeast`` reads ``--pairs``, ``--smf``,
    ``--string-info`` and ``--multigraph``; ``reverse`` reads ``--adata`` (and optionally the models and
    ``--grn-networks``); these write ``metrics.tsv``, ``summary.tsv`` and the task's other tables and
    ``report.json`` to ``--out-dir``. ``figures`` reads ``--forward-dir``, ``--yeast-dir`` and ``--reverse-dir``
    and writes PNGs to ``--figures-dir`` and tables (csv + md) to ``--tables-dir``. Sets the torch thread
    count to ``--threads``.

    Raises
    ------
    InputError
        If a count option is < 1, a ``--graph-reg`` entry is not GRAPH:LAYER:HEAD:LAMBDA,
        ``--inner-fraction`` is outside (0, 1) (forward), a file the task needs is not given, or an input is
        missing or malformed.
    """
    torch.set_num_threads(args.threads)
    for n in ("n_folds", "max_epochs", "yeast_max_epochs", "batch_size", "n_splits", "n_top_perturbations",
              "diagnostics_every", "eval_every", "rwr_dim", "n_pca"):
        if getattr(args, n) < 1:
            raise InputError(f"--{n.replace('_', '-')} must be >= 1, not {getattr(args, n)}")
    graph_reg = pt.graph_reg_from_flags(args.graph_reg)
    if args.task == "forward":
        from ..tl.perturb_forward import run_forward

        _need(args, "adata", "multigraph", "out_dir")
        if not 0 < args.inner_fraction < 1:
            raise InputError(f"--inner-fraction must be in (0, 1), not {args.inner_fraction}")
        run_forward(forward_params(args, graph_reg), adata_path=args.adata, multigraph_path=args.multigraph,
                    out_dir=Path(args.out_dir), gremln_model=args.gremln_model)
    elif args.task == "yeast":
        from ..tl.perturb_yeast import run_yeast

        _need(args, "pairs", "smf", "string_info", "multigraph", "out_dir")
        run_yeast(yeast_params(args, graph_reg), pairs_path=args.pairs, smf_path=args.smf,
                  string_info_path=args.string_info, multigraph_path=args.multigraph, out_dir=Path(args.out_dir))
    elif args.task == "reverse":
        _need(args, "adata", "out_dir")
        pt.run_reverse(reverse_params(args), adata_path=args.adata, out_dir=Path(args.out_dir),
                       gremln_model=args.gremln_model, vanilla_model=args.vanilla_model,
                       grn_networks=args.grn_networks)
    else:
        _need(args, "forward_dir", "yeast_dir", "reverse_dir", "figures_dir", "tables_dir")
        pt.run_figures(forward_dir=args.forward_dir, yeast_dir=args.yeast_dir, reverse_dir=args.reverse_dir,
                       figures_dir=args.figures_dir, tables_dir=args.tables_dir)
