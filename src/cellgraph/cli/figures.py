"""``cellgraph figures``: paper figures and tables from the evaluation results.

Reads ``--evaluate-dir/<model>/`` for every ``--models`` entry with
:func:`cellgraph.pl.figures.load_results` (every input validated before anything is written), builds the
tables with :func:`cellgraph.pl.figures.paper_tables` and the figures with
:func:`cellgraph.pl.figures.paper_figures`, then writes ``confusion_matrices.png``, ``roc_pr_curves.png`` and
``linear_probe.png`` to ``--figures-dir`` (:func:`cellgraph.io.save_figure`, 150 dpi) and
``table1_cell_type``, ``table2_ablation`` and ``table2_paired`` (each as ``.csv`` and as markdown ``.md``,
:func:`cellgraph.pl.figures.markdown_table`) to ``--tables-dir``, each atomically.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..io import atomic_path, save_figure
from ..pl.figures import load_results, markdown_table, paper_figures, paper_tables

log = logging.getLogger(__name__)


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the options of ``cellgraph figures`` to ``p``.

    Parameters
    ----------
    p : argparse.ArgumentParser
        The sub-command's parser; ``--evaluate-dir``, ``--figures-dir`` and ``--tables-dir`` are required.
    """
    p.add_argument("--evaluate-dir", required=True, help="folder with one evaluate result folder per model")
    p.add_argument("--models", nargs="+", default=["gremln", "vanilla"], help="models (default gremln vanilla)")
    p.add_argument("--figures-dir", required=True, help="folder for the PNG figures")
    p.add_argument("--tables-dir", required=True, help="folder for the CSV and markdown tables")


def run(args: argparse.Namespace) -> None:
    """``cellgraph figures``: read the evaluation results, write the paper figures and tables (module docstring).

    Parameters
    ----------
    args : argparse.Namespace
        Options of :func:`configure_parser`.

    Raises
    ------
    InputError
        If an evaluation file is missing or unreadable, or a JSON file lacks a required key
        (:func:`cellgraph.pl.figures.load_results`); nothing is written then.
    """
    results = load_results(args.evaluate_dir, list(args.models))  # validates every input first
    tables = paper_tables(results)
    figs = paper_figures(results)
    fdir, tdir = Path(args.figures_dir), Path(args.tables_dir)
    for name, fig in figs.items():
        save_figure(fig, fdir / name, dpi=150)
    for name, (df, pm) in tables.items():
        with atomic_path(tdir / f"{name}.csv") as tmp:
            df.to_csv(tmp, index=False)
        with atomic_path(tdir / f"{name}.md") as tmp:
            tmp.write_text(markdown_table(df, pm))
    log.info("figures: %d figures -> %s, tables -> %s", len(figs), fdir, tdir)
