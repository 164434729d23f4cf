"""ARACNe file formats and the checks and report of the standalone ``cellgraph aracne`` command (a drop-in
for ARACNe-AP / ARACNe3; the command line is :mod:`cellgraph.cli.aracne`).

Inputs
------
- ARACNe-AP expression matrix: tab-separated text, one header line (first field a label such as
  ``gene``, then sample names), then one line per gene: its name and one value per sample.
- h5ad: cells x genes (``X`` or ``--layer``), genes from ``var_names``; transposed to genes x cells.
- Regulator list: one name per line (ARACNe-AP ``--tfs``); blank lines and ``#`` comments ignored.

Outputs
-------
- ARACNe-AP ``network.txt``: ``Regulator  Target  MI  pvalue`` (tab-separated, header; MI in nats,
  pvalue the corrected consolidation p-value).
- ARACNe3 consolidated network: ``regulator.values  target.values  mi.values  scc.values  count.values
  log.p.values`` (scc = Spearman correlation over all samples, count = bootstraps where the edge survived,
  log.p = natural log of the uncorrected consolidation p-value).
- decoupler ``net``: ``source  target  weight  mi  pvalue  count`` (source = regulator, weight = Spearman
  correlation over all samples, the signed mode of regulation), readable by ``decoupler`` as is.

Floats are written with 17 significant digits and read with round-trip precision, so a network read
back equals the one written. These files load into VIPER / pyviper like the peers' outputs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import aracne as engine
from ..errors import InputError
from ..io import atomic_path, require_file

log = logging.getLogger(__name__)

__all__ = [
    "read_expression_tsv",
    "read_expression_h5ad",
    "read_expression",
    "write_expression_tsv",
    "write_network_ap",
    "read_network_ap",
    "write_network_aracne3",
    "read_network_aracne3",
    "write_network_decoupler",
    "usable_regulators",
    "network_report",
    "FORMATS",
]

AP_COLUMNS = ["Regulator", "Target", "MI", "pvalue"]
AP_MAP = dict(zip(AP_COLUMNS, ["regulator", "target", "mi", "pvalue"]))
A3_COLUMNS = ["regulator.values", "target.values", "mi.values", "scc.values", "count.values", "log.p.values"]
A3_MAP = dict(zip(A3_COLUMNS, ["regulator", "target", "mi", "scc", "count", "log_p"]))


def _names(xs, limit: int = 20) -> str:
    xs = [str(x) for x in xs]
    return ", ".join(xs[:limit]) + (f", ... ({len(xs) - limit} more)" if len(xs) > limit else "")


# --------------------------------------------------------------------------------------------------
# Expression
# --------------------------------------------------------------------------------------------------


def _field_counts(path: Path) -> np.ndarray:
    """Tab-separated field count of every line of ``path`` (gzip detected from its magic bytes), read one
    line (one gene) at a time; a blank line counts 0 fields. Trailing blank lines are left out."""
    import gzip
    import zlib

    counts = []
    try:
        with open(path, "rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        with (gzip.open if gz else open)(path, "rb") as fh:
            for line in fh:
                line = line.rstrip(b"\r\n")
                counts.append(line.count(b"\t") + 1 if line else 0)
    except (EOFError, zlib.error, OSError) as err:
        raise InputError(f"{path}: cannot be read ({err}); expected a tab-separated genes x samples matrix") from err
    while counts and counts[-1] == 0:
        counts.pop()
    return np.asarray(counts, dtype=np.int64)


def _check_matrix_lines(path: Path) -> None:
    """Raise :class:`InputError` naming the first line whose field count differs from the header's.

    The header is ``label, samples...``; every gene line has as many fields (or every one has one more,
    as R's ``write.table`` writes a header without the row-name label). A blank line inside the matrix
    is an error (line numbers after it would be wrong); blank lines at the end are ignored.
    """
    counts = _field_counts(path)
    if counts.size == 0:
        raise InputError(f"{path}: empty expression matrix; expected a header 'gene<TAB>sample1<TAB>...'")
    if counts[0] < 2:
        raise InputError(f"{path}: line 1: header has no tab; expected a tab-separated header "
                         "'gene<TAB>sample1<TAB>...' (is the file comma-separated?)")
    expected = int(counts[0]) + 1 if counts.size > 1 and (counts[1:] == counts[0] + 1).all() else int(counts[0])
    bad = np.flatnonzero(counts[1:] != expected)
    if bad.size:
        i = int(bad[0]) + 1
        found = "a blank line" if counts[i] == 0 else f"{counts[i]} fields"
        raise InputError(
            f"{path}: line {i + 1}: expected {expected} tab-separated fields (a gene name and {expected - 1} "
            f"sample values), found {found}; not a tab-separated genes x samples matrix"
            + (f" ({bad.size} such lines)" if bad.size > 1 else "")
        )


def read_expression_tsv(path) -> tuple[np.ndarray, list[str], list[str]]:
    """Read an ARACNe-AP expression matrix.

    Parameters
    ----------
    path : path
        Tab-separated text: header ``label, samples...``, then one line per gene (module docstring, Inputs).

    Returns
    -------
    (expr float64 [G, n], gene names [G], sample names [n]). Missing values (empty, NA, NaN) are NaN; they
    are not dropped here (the caller reports them, see :func:`cellgraph.grn.aracne.check_input`).

    Raises
    ------
    InputError
        If the file is missing or empty, a line (a blank one included) has another number of fields than
        the header (naming the line), or a value is not a number (naming the line, the sample column and
        the value).
    """
    path = require_file(path, "expression matrix")
    _check_matrix_lines(path)
    try:
        df = pd.read_csv(path, sep="\t", header=0, index_col=0, dtype={0: str}, low_memory=False,
                         float_precision="round_trip")
    except pd.errors.EmptyDataError as err:
        raise InputError(f"{path}: empty expression matrix") from err
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path}: not a tab-separated genes x samples matrix ({err})") from err
    if df.shape[1] == 0:
        raise InputError(f"{path}: no sample columns (expected a header 'gene<TAB>sample1<TAB>...')")
    if df.shape[0] == 0:
        raise InputError(f"{path}: no gene rows below the header")
    for j, col in enumerate(df.columns):
        if df[col].dtype.kind in "fiub":
            continue
        num = pd.to_numeric(df[col], errors="coerce")
        bad = np.flatnonzero(num.isna().to_numpy() & df[col].notna().to_numpy())
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"{path}: line {i + 2}, sample {col!r} (column {j + 2}): {df[col].iloc[i]!r} is not a number "
                f"({bad.size} such values in this column)"
            )
        df[col] = num
    genes = [str(g) for g in df.index]
    return df.to_numpy(dtype=np.float64), genes, [str(c) for c in df.columns]


def read_expression_h5ad(path, layer: str | None = None) -> tuple[np.ndarray, list[str], list[str]]:
    """Read an h5ad (cells x genes) as (expr float64 [G, n], var_names [G], obs_names [n]).

    Parameters
    ----------
    path : path
        h5ad file, cells x genes.
    layer : str, optional
        Layer to read instead of ``X`` (dense or sparse).

    Returns
    -------
    (expr float64 [G, n], the transpose of the matrix read; gene names [G]; cell names [n]).

    Raises
    ------
    InputError
        If the file is not an h5ad or has no layer ``layer``.
    """
    import anndata as ad
    import scipy.sparse as sp

    path = require_file(path, "expression h5ad")
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - any parse failure is the user's file
        raise InputError(f"{path}: cannot be read as h5ad ({err})") from err
    if layer is not None and layer not in adata.layers:
        raise InputError(f"{path}: no layer {layer!r} (layers: {list(adata.layers)})")
    x = adata.X if layer is None else adata.layers[layer]
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    return np.asarray(x, dtype=np.float64).T.copy(), [str(g) for g in adata.var_names], [str(c) for c in adata.obs_names]


def read_expression(path, layer: str | None = None):
    """:func:`read_expression_h5ad` for ``*.h5ad``, else :func:`read_expression_tsv`.

    Parameters
    ----------
    path : path
        Expression file; the ``.h5ad`` suffix selects the reader.
    layer : str, optional
        h5ad layer (ignored for text matrices).

    Returns
    -------
    (expr float64 [G, n], gene names [G], sample names [n]).

    Raises
    ------
    InputError
        From the reader, on a missing or malformed file.
    """
    if str(path).endswith(".h5ad"):
        return read_expression_h5ad(path, layer)
    return read_expression_tsv(path)


def write_expression_tsv(path, expr: np.ndarray, genes, samples, label: str = "gene") -> None:
    """Write an ARACNe-AP expression matrix (header ``label, samples...``; one line per gene).

    Parameters
    ----------
    path : path
        Output file, written atomically; floats with 17 significant digits.
    expr : float array [G, n]
        Expression, genes x samples.
    genes : sequence of str [G]; samples : sequence of str [n]
        Row and column names.
    label : str
        First header field.
    """
    df = pd.DataFrame(np.asarray(expr), index=pd.Index([str(g) for g in genes], name=label),
                      columns=[str(s) for s in samples])
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", float_format="%.17g")


# --------------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------------


def write_network_ap(df: pd.DataFrame, path) -> None:
    """ARACNe-AP ``network.txt`` from an engine network (``regulator, target, mi, pvalue``).

    Parameters
    ----------
    df : DataFrame
        Network of :func:`cellgraph.grn.aracne.aracne` (columns ``regulator, target, mi, pvalue`` used).
    path : path
        Output file, tab-separated with header ``Regulator Target MI pvalue``, written atomically.
    """
    out = df[["regulator", "target", "mi", "pvalue"]].rename(columns={v: k for k, v in AP_MAP.items()})
    with atomic_path(path) as tmp:
        out.to_csv(tmp, sep="\t", index=False, float_format="%.17g")


def write_network_aracne3(df: pd.DataFrame, path) -> None:
    """ARACNe3 consolidated network from an engine network (``regulator, target, mi, scc, count, log_p``).

    Parameters
    ----------
    df : DataFrame
        Network of :func:`cellgraph.grn.aracne.aracne` (the six columns above used).
    path : path
        Output file, tab-separated with the ARACNe3 header (:data:`A3_COLUMNS`), written atomically.
    """
    out = df[list(A3_MAP.values())].rename(columns={v: k for k, v in A3_MAP.items()})
    with atomic_path(path) as tmp:
        out.to_csv(tmp, sep="\t", index=False, float_format="%.17g")


def write_network_decoupler(df: pd.DataFrame, path) -> None:
    """decoupler-style network (``source, target, weight, mi, pvalue, count``; weight = ``scc``) from an
    engine network.

    Parameters
    ----------
    df : DataFrame
        Network of :func:`cellgraph.grn.aracne.aracne` (``regulator, target, scc, mi, pvalue, count`` used).
    path : path
        Output file, tab-separated with header, written atomically.
    """
    out = pd.DataFrame({"source": df["regulator"], "target": df["target"], "weight": df["scc"], "mi": df["mi"],
                        "pvalue": df["pvalue"], "count": df["count"]})
    with atomic_path(path) as tmp:
        out.to_csv(tmp, sep="\t", index=False, float_format="%.17g")


#: Network formats of ``cellgraph aracne --format``: name -> (file name, writer of an engine network).
FORMATS = {"aracne-ap": ("network.txt", write_network_ap), "aracne3": ("network.tsv", write_network_aracne3),
           "decoupler": ("network.tsv", write_network_decoupler)}


def _read_network(path, columns: list[str], mapping: dict, what: str) -> pd.DataFrame:
    path = require_file(path, what)
    try:
        df = pd.read_csv(path, sep="\t", dtype={columns[0]: str, columns[1]: str}, keep_default_na=False,
                         na_values={c: ["NA", "NaN", "nan", ""] for c in columns[2:]},
                         float_precision="round_trip")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path}: cannot be read as a tab-separated {what} ({err})") from err
    if list(df.columns) != columns:
        raise InputError(f"{path}: header {list(df.columns)}; expected {columns} ({what})")
    for c in columns[2:]:
        if df[c].dtype.kind not in "fi":
            bad = np.flatnonzero((pd.to_numeric(df[c], errors="coerce").isna() & df[c].notna()).to_numpy())
            if bad.size:
                i = int(bad[0])
                raise InputError(f"{path}: line {i + 2}, column {c!r}: {df[c].iloc[i]!r} is not a number")
            df[c] = pd.to_numeric(df[c])
    return df.rename(columns=mapping)


def read_network_ap(path) -> pd.DataFrame:
    """Read an ARACNe-AP ``network.txt`` as ``regulator, target, mi, pvalue``.

    Parameters
    ----------
    path : path
        Tab-separated file with header ``Regulator Target MI pvalue``.

    Returns
    -------
    DataFrame with columns ``regulator, target`` (str), ``mi`` (nats), ``pvalue``; NA/NaN/empty numbers
    read as NaN.

    Raises
    ------
    InputError
        If the file is missing or unreadable, on a wrong header or a non-numeric MI / p-value (naming the
        line).
    """
    return _read_network(path, AP_COLUMNS, AP_MAP, "ARACNe-AP network")


def read_network_aracne3(path) -> pd.DataFrame:
    """Read an ARACNe3 consolidated network as ``regulator, target, mi, scc, count, log_p``.

    Parameters
    ----------
    path : path
        Tab-separated file with the ARACNe3 header (:data:`A3_COLUMNS`).

    Returns
    -------
    DataFrame with columns ``regulator, target`` (str), ``mi`` (nats), ``scc``, ``count``, ``log_p``
    (natural log); NA/NaN/empty numbers read as NaN.

    Raises
    ------
    InputError
        If the file is missing or unreadable, on a wrong header or a non-numeric value (naming the line).
    """
    return _read_network(path, A3_COLUMNS, A3_MAP, "ARACNe3 network")


# --------------------------------------------------------------------------------------------------
# Checks and report of ``cellgraph aracne``
# --------------------------------------------------------------------------------------------------


def usable_regulators(expr: np.ndarray, genes: list[str], regulators: list[str], expression_path: str | os.PathLike,
                      regulators_path: str | os.PathLike) -> tuple[dict, list[str]]:
    """Check an expression matrix and keep the regulators that ARACNe can use.

    Parameters
    ----------
    expr : float array [G, n], genes x samples (:func:`read_expression`).
    genes : the G gene names; regulators : regulator names as read (:func:`cellgraph.grn.celltypes.read_regulators`).
    expression_path, regulators_path : the input files, named in messages.

    Returns
    -------
    (check, present): the :func:`cellgraph.grn.aracne.check_input` dict (missing regulators, constant genes
    and regulators, ...) and the regulators that are non-constant genes of the matrix, in input order.
    Missing regulators and constant genes are skipped with a warning.

    Raises
    ------
    InputError
        For repeated gene names, missing or non-finite values, or no usable regulator.
    """
    chk = engine.check_input(expr, genes, regulators)
    if chk["duplicated_genes"]:
        d = chk["duplicated_genes"]
        raise InputError(f"{expression_path}: {len(d)} gene names occur more than once: {_names(d)}")
    if chk["nonfinite_genes"]:
        d = chk["nonfinite_genes"]
        raise InputError(f"{expression_path}: {chk['nonfinite_values']} missing or non-finite values (NA/NaN/inf) "
                         f"in {len(d)} genes: {_names(d)}")
    missing = chk["missing_regulators"]
    present = [r for r in regulators if r not in set(missing) and r not in set(chk["constant_regulators"])]
    if not present:
        raise InputError(f"{regulators_path}: none of the {len(regulators)} regulators is a non-constant gene of "
                         f"{expression_path} ({len(missing)} missing: {_names(missing, 5)}; "
                         f"{len(chk['constant_regulators'])} constant)")
    if missing:
        log.warning("%d of %d regulators are not in %s and are skipped: %s", len(missing), len(regulators),
                    expression_path, _names(missing, 10))
    if chk["constant_genes"]:
        log.warning("%d constant genes are skipped: %s", len(chk["constant_genes"]), _names(chk["constant_genes"], 10))
    return chk, present


def network_report(df: pd.DataFrame, genes: list[str], samples: list[str], regulators: list[str],
                   present: list[str], check: dict) -> dict:
    """The data part of ``cellgraph aracne``'s ``report.json``: sizes, what was skipped, the engine's attrs.

    Parameters
    ----------
    df : network of :func:`cellgraph.grn.aracne.aracne` (its ``attrs`` hold the run's thresholds and counts).
    genes : [G] and samples : [n], the names of the matrix; regulators : as read; present : those used.
    check : the :func:`usable_regulators` check dict.

    Returns
    -------
    dict: ``genes``, ``samples``, regulators read / used / missing, constant genes and regulators, genes used,
    samples per bootstrap, MI threshold (nats) overall and per bootstrap, pairs tested, edges above the
    threshold and after DPI per bootstrap, count rate, minimum count, consolidation rule, bootstraps
    resumed and ``edges``.
    """
    a, chk = df.attrs, check
    missing = chk["missing_regulators"]
    return dict(
        genes=len(genes),
        samples=len(samples),
        regulators_read=len(regulators),
        regulators_used=len(present),
        regulators_missing=dict(count=len(missing), names=missing),
        constant_genes=dict(count=len(chk["constant_genes"]), names=chk["constant_genes"]),
        constant_regulators=dict(count=len(chk["constant_regulators"]), names=chk["constant_regulators"]),
        genes_used=len(genes) - len(chk["constant_genes"]),
        samples_per_bootstrap=a["n_per_bootstrap"],
        mi_threshold_nats=a["mi_threshold"],
        mi_thresholds_per_bootstrap=a["mi_thresholds_per_bootstrap"],
        pairs_tested=a["n_tested"],
        edges_above_threshold_per_bootstrap=a["edges_above_threshold"],
        edges_after_dpi_per_bootstrap=a["edges_per_bootstrap"],
        count_rate=a["count_rate"],
        min_count=a["min_count"],
        consolidation_rule=a["consolidation_rule"],
        bootstraps_resumed=a["bootstraps_resumed"],
        edges=int(len(df)),
    )
