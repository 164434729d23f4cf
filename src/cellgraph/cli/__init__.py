"""The ``cellgraph`` command: one subcommand per workflow stage.

Each stage module defines ``configure_parser(parser)`` and ``run(args)``; modules are imported only when
their subcommand runs, so ``cellgraph --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import InputError
from ..runtime import limit_thread_pools, threads_from_environment

STAGES: dict[str, tuple[str, str]] = {
    "sources": ("cellgraph.cli.sources", "download one public source file with its pinned SHA-256, or extract a zip member"),
    "datasets": ("cellgraph.cli.datasets", "convert a published evaluation data set to the project's h5ad"),
    "corpus": ("cellgraph.cli.corpus", "pretraining corpus from the CELLxGENE Census (or a census-like h5ad)"),
    "networks": ("cellgraph.cli.networks", "parse the gene networks and map ids to HGNC symbols"),
    "multigraph": ("cellgraph.cli.multigraph", "nine-graph gene multigraph (human or yeast) from full network releases"),
    "expression": ("cellgraph.cli.expression", "QC, normalise, cluster and split single-cell counts"),
    "grn": ("cellgraph.cli.grn", "ARACNe gene regulatory networks per cell type, beside a permutation control"),
    "aracne": ("cellgraph.cli.aracne", "standalone ARACNe on an ARACNe-AP matrix or h5ad; ARACNe-AP/ARACNe3 network files"),
    "spectral": ("cellgraph.cli.spectral", "normalised Laplacians and Chebyshev heat-kernel coefficients"),
    "tokenize": ("cellgraph.cli.tokenize", "per-cell rank tokens and subgraphs in shard files"),
    "train": ("cellgraph.cli.train", "train a GREmLN (graph-diffusion attention) or vanilla transformer"),
    "evaluate": ("cellgraph.cli.evaluate", "cell-type annotation and baselines, masked tokens, hidden-edge recovery, linear probe"),
    "transfer": ("cellgraph.cli.transfer", "frozen-embedding annotation on a data set outside pretraining, beside its baselines"),
    "figures": ("cellgraph.cli.figures", "paper figures and tables from the evaluation results"),
    "ablation": ("cellgraph.cli.ablation", "GREmLN minus vanilla over pretraining seeds, paired, with 95%% intervals"),
    "install-profile": ("cellgraph.cli.profile", "copy profiles/slurm to ~/.config/snakemake so `snakemake --profile slurm` works"),
    "perturb": ("cellgraph.cli.perturb", "cell graph transformers: forward/reverse perturbation prediction, yeast fitness"),
    "diffusion": ("cellgraph.cli.diffusion", "latent-token diffusion transformer: train, sample, evaluate"),
}


def dataclass_from_args(cls, args: argparse.Namespace, **given):
    """An instance of the parameter dataclass ``cls`` whose fields take the command-line option of the same name.

    Parameters
    ----------
    cls : dataclass type
        The library's parameter dataclass (e.g. :class:`cellgraph.tl.diffusion.TrainSettings`).
    args : argparse.Namespace
        The parsed options of the stage's ``configure_parser``.
    **given
        Field values that do not come from the option of the same name (a parsed flag, a renamed option, a
        list turned into a tuple); they replace the option's value.

    Returns
    -------
    cls
        ``cls(**{field: given.get(field, getattr(args, field))})`` over the fields of ``cls``.

    Raises
    ------
    AttributeError
        If a field has neither an option of its name nor a value in ``given`` (a programming error).
    """
    import dataclasses

    return cls(**{f.name: given[f.name] if f.name in given else getattr(args, f.name)
                  for f in dataclasses.fields(cls)})


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``cellgraph`` argument parser, with one subcommand per stage of :data:`STAGES`.

    Only the stage named by the first non-option word of ``argv`` gets its module imported and its options
    added (``configure_parser``), so ``cellgraph --help`` imports no stage module.

    Parameters
    ----------
    argv : list of str or None
        The arguments after the program name; None or empty adds no stage's options.

    Returns
    -------
    argparse.ArgumentParser
        The parser with ``-v/--verbose`` and the required ``STAGE`` subcommand (``args.stage``).
    """
    parser = argparse.ArgumentParser(prog="cellgraph", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at DEBUG level")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    wanted = None
    if argv:
        wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            importlib.import_module(module).configure_parser(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cellgraph`` command: parse ``argv``, set up logging and threads, run the stage.

    Parameters
    ----------
    argv : the arguments after the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success; 2 if the stage raised :class:`InputError` (its message is printed to stderr as
        ``cellgraph <stage>: error: ...``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    module = importlib.import_module(STAGES[args.stage][0])
    threads = getattr(args, "threads", None) or threads_from_environment()
    if threads:
        limit_thread_pools(threads)
    try:
        module.run(args)
    except InputError as err:
        print(f"cellgraph {args.stage}: error: {err}", file=sys.stderr)
        return 2
    return 0
