"""``cellgraph corpus``: a pretraining corpus from the CELLxGENE Census (or a census-like h5ad).

Turns the flags into a :class:`cellgraph.pp.corpus.CorpusFilter` and a :class:`cellgraph.pp.corpus.CorpusJob`
and calls :func:`cellgraph.pp.corpus.build_corpus`, which queries the cells, checks they are disjoint from the
``--check-against`` h5ad files, writes the shards, assembles the corpus h5ad ``--out`` on disk, and writes the
manifest JSON ``--manifest`` (default: ``--out`` with ``.manifest.json``). What ``workflow/rules/corpus.smk``
calls::

    cellgraph corpus --source census --census-version 2025-01-30 --organism "Homo sapiens" \\
        --tissues blood --exclude-cell-types erythrocyte --cap-per-type 20000 --shard-cells 50000 \\
        --out resources/corpus/corpus.h5ad --manifest resources/corpus/manifest.json
    cellgraph corpus --source h5ad --in census_slice.h5ad ... (same options)
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..pp.corpus import SOURCES, CorpusFilter, CorpusJob, build_corpus

log = logging.getLogger(__name__)


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the options of ``cellgraph corpus`` to ``p``.

    Parameters
    ----------
    p : argparse.ArgumentParser
        The sub-command's parser; ``--source`` (``census`` or ``h5ad``) and ``--out`` are required.
    """
    p.add_argument("--source", required=True, choices=SOURCES, help="census (needs the internet) | h5ad")
    p.add_argument("--in", dest="input", default="", help="h5ad: the census-like h5ad")
    p.add_argument("--census-version", default="2025-01-30", help="census: a dated release")
    p.add_argument("--organism", default="Homo sapiens")
    for name in ("tissues", "cell-types", "assays", "exclude-cell-types", "exclude-dataset-ids", "check-against"):
        p.add_argument(f"--{name}", nargs="*", default=[], metavar="VALUE")
    p.add_argument("--primary-only", action=argparse.BooleanOptionalAction, default=True,
                   help="keep only is_primary_data == True")
    p.add_argument("--cap-per-type", type=int, default=0, help="most cells per cell type (0 = all)")
    p.add_argument("--shard-cells", type=int, default=50_000, help="most cells per shard")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the corpus h5ad")
    p.add_argument("--manifest", default="", help="manifest JSON (default: OUT with .manifest.json)")


def run(args: argparse.Namespace) -> None:
    """``cellgraph corpus``: build the corpus h5ad and its manifest (module docstring).

    Parameters
    ----------
    args : argparse.Namespace
        Options of :func:`configure_parser`.

    Raises
    ------
    InputError
        As :func:`cellgraph.pp.corpus.build_corpus`: ``--source h5ad`` without ``--in``, cellxgene-census not
        installed or the census unreachable, a filter no cell matches, a corpus sharing cell ids with a
        ``--check-against`` file; nothing is written then.
    """
    spec = CorpusFilter(tissues=tuple(args.tissues), cell_types=tuple(args.cell_types), assays=tuple(args.assays),
                        exclude_cell_types=tuple(args.exclude_cell_types),
                        exclude_dataset_ids=tuple(args.exclude_dataset_ids), primary_only=args.primary_only)
    out = Path(args.out)
    job = CorpusJob(source=args.source, out=out, manifest=Path(args.manifest or out.with_suffix(".manifest.json")),
                    spec=spec, input=Path(args.input) if args.input else None, census_version=args.census_version,
                    organism=args.organism, cap_per_type=args.cap_per_type, shard_cells=args.shard_cells,
                    seed=args.seed, check_against=tuple(args.check_against))
    manifest = build_corpus(job)
    log.info("corpus: %d cells of %d types in %d shards -> %s", manifest["cells_selected"],
             len(manifest["cells_per_type"]), len(manifest["cells_per_shard"]), out)
