"""``cellgraph networks``: parse the prior gene networks, map their ids to HGNC symbols, write the outputs.

Calls :func:`cellgraph.graphs.networks.build_networks` (parse and map DoRothEA, TRRUST, HuRI, STRING and
optionally Pathway Commons, in memory), then writes to ``--out-dir``: ``edges.parquet``
(:data:`cellgraph.graphs.networks.EDGE_COLUMNS`), ``regulators.txt`` (one symbol a line), ``rejects.tsv.gz``
(:data:`cellgraph.graphs.networks.REJECT_COLUMNS`; gzip without name or time, so byte-reproducible) and
``report.json``, each atomically.
"""

from __future__ import annotations

import argparse
import gzip
import logging
from pathlib import Path

from ..graphs.networks import PC_PHYSICAL, PC_REGULATORY, build_networks
from ..io import atomic_path, write_json

log = logging.getLogger(__name__)


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the options of ``cellgraph networks`` to ``p``.

    Parameters
    ----------
    p : argparse.ArgumentParser
        The sub-command's parser; the input files (``--dorothea`` ... ``--ensp-map``) and ``--out-dir`` are
        required.
    """
    p.add_argument("--dorothea", required=True, help="DoRothEA regulons (tf, confidence, target, mor; .tsv[.gz])")
    p.add_argument("--trrust", required=True, help="TRRUST raw data (TF, target, mode, PMIDs; no header)")
    p.add_argument("--huri", required=True, help="HuRI binary PPI (protein1, protein2 as ENSG ids)")
    p.add_argument("--string", required=True, help="STRING human edges (protein1, protein2[, symbol1, symbol2])")
    p.add_argument("--string-info", required=True, help="STRING protein.info (#string_protein_id, preferred_name, ...)")
    p.add_argument("--alias-map", required=True, help="hs_alias_symbol.tsv (alias_symbol, symbol)")
    p.add_argument("--ensg-map", required=True, help="hs_ensg_entrez_symbol.tsv (ensg, entrez, symbol)")
    p.add_argument("--ensp-map", required=True, help="hs_ensp_entrez_symbol.tsv (ensp, entrez, symbol)")
    p.add_argument(
        "--dorothea-confidence", nargs="+", default=["A", "B", "C"], metavar="LETTER",
        help="DoRothEA confidence levels kept as the prior graph (default A B C)",
    )
    p.add_argument("--pathway-commons", default=None,
                   help="optional Pathway Commons SIF (source relation target, HGNC symbols): adds the graphs "
                        "pathway_commons_physical and pathway_commons_regulatory (default: none)")
    p.add_argument("--pc-physical", nargs="+", default=list(PC_PHYSICAL), metavar="RELATION",
                   help="SIF relations of pathway_commons_physical (default %(default)s)")
    p.add_argument("--pc-regulatory", nargs="+", default=list(PC_REGULATORY), metavar="RELATION",
                   help="SIF relations of pathway_commons_regulatory (default %(default)s)")
    p.add_argument("--out-dir", required=True, help="folder for edges.parquet, regulators.txt, rejects.tsv.gz, report.json")


def run(args: argparse.Namespace) -> None:
    """``cellgraph networks``: :func:`~cellgraph.graphs.networks.build_networks`, then write its outputs
    atomically to ``--out-dir`` (module docstring).

    Parameters
    ----------
    args : argparse.Namespace
        Options of :func:`configure_parser`.

    Raises
    ------
    InputError
        As :func:`~cellgraph.graphs.networks.build_networks` (a missing or malformed input, an unknown
        ``--dorothea-confidence`` letter).
    """
    edges, regulators, rejects, report = build_networks(
        dorothea=args.dorothea, trrust=args.trrust, huri=args.huri, string=args.string,
        string_info=args.string_info, alias_map=args.alias_map, ensg_map=args.ensg_map, ensp_map=args.ensp_map,
        dorothea_confidence=args.dorothea_confidence, pathway_commons=args.pathway_commons,
        pc_physical=args.pc_physical, pc_regulatory=args.pc_regulatory,
    )
    out = Path(args.out_dir)
    with atomic_path(out / "edges.parquet") as tmp:
        edges.to_parquet(tmp, index=False)
    with atomic_path(out / "regulators.txt") as tmp:
        tmp.write_text("".join(f"{g}\n" for g in regulators))
    with atomic_path(out / "rejects.tsv.gz") as tmp:
        # gzip.compress with mtime=0 stores no file name or time: same input, same bytes
        tmp.write_bytes(gzip.compress(rejects.to_csv(sep="\t", index=False).encode(), compresslevel=6, mtime=0))
    write_json(out / "report.json", report)
    for g, s in report["sources"].items():
        log.info("%s: %d rows read, %d edges kept, dropped %s", g, s["rows_read"], s["edges_kept"], s["dropped"])
    log.info("%d regulators; outputs in %s", len(regulators), out)
