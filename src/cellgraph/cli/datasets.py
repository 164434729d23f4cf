"""``cellgraph datasets``: convert a published evaluation data set to the project's h5ad.

Converts ``--in`` with the converter of ``--format`` (:func:`cellgraph.io.datasets.convert`:
:func:`~cellgraph.io.datasets.convert_human_immune` for ``h5ad``, :func:`~cellgraph.io.datasets.convert_gears`
for ``gears_zip``) and writes the h5ad ``--out`` and its JSON report ``--report`` (default: ``--out`` with
``.report.json``) atomically with :func:`cellgraph.io.datasets.write_dataset`. An empty option (``--label-key=``)
takes the converter's default. What ``workflow/rules/datasets.smk`` calls::

    cellgraph datasets --format h5ad --in Immune_ALL_human.h5ad --out human_immune.h5ad \\
        --report human_immune.report.json --label-key final_annotation --batch-key batch --counts-layer counts
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ..io.datasets import FORMATS, convert, write_dataset

log = logging.getLogger(__name__)


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the options of ``cellgraph datasets`` to ``p``.

    Parameters
    ----------
    p : argparse.ArgumentParser
        The sub-command's parser; ``--format`` (one of :data:`cellgraph.io.datasets.FORMATS`), ``--in`` and
        ``--out`` are required; ``''`` for an optional key means the format's default.
    """
    p.add_argument("--format", required=True, choices=FORMATS, help="h5ad (scIB Human Immune) | gears_zip")
    p.add_argument("--in", dest="input", required=True, help="the published file")
    p.add_argument("--out", required=True, help="output h5ad")
    p.add_argument("--report", default=None, help="JSON report (default: OUT with .report.json)")
    p.add_argument("--label-key", default="", help="obs column of the cell type ('' = the format's default)")
    p.add_argument("--batch-key", default="", help="h5ad: obs column of the batch")
    p.add_argument("--counts-layer", default="", help="h5ad: layer of the raw counts")
    p.add_argument("--perturbation-key", default="", help="gears_zip: obs column of the condition")
    p.add_argument("--member", default="", help="gears_zip: the h5ad inside the zip")


def _converter_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of the ``--format`` converter; ``None`` (from an empty option) = its default.

    ``gears_zip`` extracts into a temporary folder next to ``--out`` when that folder exists (else the system's
    temporary folder).
    """
    opt: dict[str, Any] = {"label_key": args.label_key or None}
    if args.format == "h5ad":
        opt.update(batch_key=args.batch_key or None, counts_layer=args.counts_layer or None)
    else:
        out_dir = Path(args.out).resolve().parent
        opt.update(perturbation_key=args.perturbation_key or None, member=args.member or None,
                   workdir=str(out_dir) if out_dir.is_dir() else None)
    return opt


def run(args: argparse.Namespace) -> None:
    """``cellgraph datasets``: convert ``--in`` and write the h5ad and its report (module docstring).

    Parameters
    ----------
    args : argparse.Namespace
        Options of :func:`configure_parser`.

    Raises
    ------
    InputError
        As the converters (:func:`cellgraph.io.datasets.convert_human_immune`,
        :func:`cellgraph.io.datasets.convert_gears`): an unreadable file, a missing obs column or layer,
        non-finite or negative values, duplicated names; nothing is written then.
    """
    adata = convert(args.format, args.input, **_converter_options(args))
    report = write_dataset(adata, args.out, args.report)
    log.info("%s: %d cells x %d genes, counts from %s -> %s", args.input, report["cells"], report["genes"],
             report["counts_from"], args.out)
