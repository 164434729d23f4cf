"""``cellgraph multigraph``: the nine-graph gene multigraph (human or yeast) from full network releases.

Reads the ``--genes`` list (if given) and parses ``--threshold SOURCE.COLUMN=MIN`` items, calls
:func:`cellgraph.graphs.multigraph.build_multigraph`, then writes to ``--out-dir``: ``multigraph.npz``
(:func:`~cellgraph.graphs.multigraph.save_multigraph`), ``summary.tsv``
(:func:`~cellgraph.graphs.multigraph.summarize`), ``degrees.png`` and ``degrees.pdf``
(:func:`~cellgraph.graphs.multigraph.plot_degree_distributions`), ``rejects.tsv.gz``
(:data:`cellgraph.graphs.multigraph.REJECT_COLUMNS`; gzip without name or time) and ``report.json``.
"""

from __future__ import annotations

import argparse
import gzip
import logging
from pathlib import Path

from ..errors import InputError
from ..graphs.multigraph import (
    DEFAULT_THRESHOLDS,
    ORGANISMS,
    build_multigraph,
    plot_degree_distributions,
    save_multigraph,
    summarize,
)
from ..graphs.networks import PC_PHYSICAL, PC_REGULATORY
from ..io import atomic_path, require_file, write_json, write_tsv

log = logging.getLogger(__name__)

#: One optional ``--<key>`` file option per input of :func:`~cellgraph.graphs.multigraph.build_multigraph`
#: (its ``inputs`` keys) -> help text.
FILE_FLAGS = {
    "string_links": "STRING protein.links.detailed (space-separated, channel scores)",
    "string_physical": "STRING protein.physical.links (protein1 protein2 combined_score)",
    "string_info": "STRING protein.info of the organism",
    "string_aliases": "STRING protein.aliases (yeast: ids -> SGD ORF names)",
    "string_actions": "STRING v11 protein.actions (yeast regulatory)",
    "dorothea": "DoRothEA regulons (human)", "collectri": "CollecTRI regulons, OmniPath TSV (human)",
    "trrust": "TRRUST raw data (human)", "huri": "HuRI binary PPI (human)",
    "pathway_commons": "Pathway Commons SIF, HGNC symbols (human)",
    "biogrid": "BioGRID TAB3 (.tab3.txt)", "tflink": "TFLink simple format", "hint_binary": "HINT binary hq",
    "hint_cocomp": "HINT co-complex hq",
    "alias_map": "hs_alias_symbol.tsv", "ensg_map": "hs_ensg_entrez_symbol.tsv", "ensp_map": "hs_ensp_entrez_symbol.tsv",
}


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the options of ``cellgraph multigraph`` to ``p``.

    Parameters
    ----------
    p : argparse.ArgumentParser
        The sub-command's parser: ``--organism`` and ``--out-dir`` (required), one optional ``--<source>``
        file per key of :data:`FILE_FLAGS`, ``--genes``, ``--threshold SOURCE.COLUMN=MIN ...`` (STRING scores
        0..1000), ``--dorothea-confidence``, ``--string-actions-modes``, ``--pc-physical``, ``--pc-regulatory``.
    """
    p.add_argument("--organism", required=True, choices=ORGANISMS)
    for key, help_text in FILE_FLAGS.items():
        p.add_argument(f"--{key.replace('_', '-')}", default=None, metavar="FILE", help=help_text)
    p.add_argument("--genes", default=None, metavar="FILE",
                   help="optional node list, one gene per line (default: the organism's gene universe)")
    p.add_argument("--threshold", nargs="*", default=[], metavar="SOURCE.COLUMN=MIN",
                   help=f"minimum scores (defaults {DEFAULT_THRESHOLDS})")
    p.add_argument("--dorothea-confidence", nargs="+", default=["A", "B", "C"], metavar="LETTER")
    p.add_argument("--string-actions-modes", nargs="+", default=["expression"], metavar="MODE",
                   help="STRING actions modes kept as regulatory edges (default expression)")
    p.add_argument("--pc-physical", nargs="+", default=list(PC_PHYSICAL), metavar="RELATION")
    p.add_argument("--pc-regulatory", nargs="+", default=list(PC_REGULATORY), metavar="RELATION")
    p.add_argument("--out-dir", required=True,
                   help="folder for multigraph.npz, summary.tsv, degrees.png, rejects.tsv.gz, report.json")


def _parse_thresholds(items: list[str]) -> dict:
    """``["source.column=MIN", ...]`` -> ``{"source.column": MIN}``; InputError on an item without ``=INTEGER``."""
    out = {}
    for it in items:
        key, sep, val = it.partition("=")
        try:
            out[key.strip()] = int(val)
        except ValueError:
            sep = ""
        if not sep:
            raise InputError(f"--threshold {it!r}: expected SOURCE.COLUMN=INTEGER, for example string_links.combined_score=400")
    return out


def _read_genes(path: str | None) -> list[str] | None:
    """The non-empty, stripped lines of the ``--genes`` file (None without one); InputError if it has none."""
    if not path:
        return None
    genes = [g.strip() for g in require_file(path, "--genes").read_text().splitlines() if g.strip()]
    if not genes:
        raise InputError(f"--genes {path}: no gene names")
    return genes


def run(args: argparse.Namespace) -> None:
    """``cellgraph multigraph``: :func:`~cellgraph.graphs.multigraph.build_multigraph`, then write its outputs
    to ``--out-dir`` (module docstring).

    Parameters
    ----------
    args : argparse.Namespace
        Options of :func:`configure_parser`.

    Raises
    ------
    InputError
        A ``--genes`` file without names, a malformed ``--threshold``, or as
        :func:`~cellgraph.graphs.multigraph.build_multigraph`.
    """
    inputs = {k: getattr(args, k) for k in FILE_FLAGS}
    genes = _read_genes(args.genes)
    graphs, rejects, report = build_multigraph(
        organism=args.organism, inputs=inputs, thresholds=_parse_thresholds(args.threshold),
        dorothea_confidence=args.dorothea_confidence, string_actions_modes=args.string_actions_modes,
        pc_relations={"physical": args.pc_physical, "regulatory": args.pc_regulatory}, genes=genes,
    )
    out = Path(args.out_dir)
    save_multigraph(out / "multigraph.npz", args.organism, graphs)
    summary = summarize(graphs)
    write_tsv(summary, out / "summary.tsv")
    plot_degree_distributions(graphs, out / "degrees.png", f"{args.organism} multigraph: degree distributions")
    with atomic_path(out / "rejects.tsv.gz") as tmp:
        tmp.write_bytes(gzip.compress(rejects.to_csv(sep="\t", index=False).encode(), compresslevel=6, mtime=0))
    write_json(out / "report.json", report)
    log.info("%s multigraph: %d nodes\n%s", args.organism, len(graphs["nodes"]), summary.to_string(index=False))
