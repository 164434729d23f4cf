r"""Converters for the GREmLN paper's evaluation datasets: published file -> the project's h5ad.

Two published formats are read; each converter checks the file, reports what it found where, and returns an
:class:`anndata.AnnData` in the project's h5ad contract (what :func:`cellgraph.pp.expression.read_counts`
accepts: raw counts in ``X``, cell labels in an ``obs`` column). Nothing is guessed silently: every choice
(where the counts came from, whether they are integers, what the published ``X`` held) is written to a
JSON report next to the h5ad.

``h5ad`` - Human Immune (Luecken et al. 2022, *Nat Methods* 19:41, scIB), ``Immune_ALL_human.h5ad``
    The copy scGPT uses (``bowang-lab/scGPT`` ``data/README.md``: "Immune Human dataset",
    ``https://figshare.com/ndownloader/files/25717328``). Layout, from public material (not from the file,
    which was not downloaded here):

    * 33,506 cells x 12,303 genes, gene symbols as ``var_names``; ``obs["final_annotation"]`` the 16 cell
      types, ``obs["batch"]`` the 10 batches (scGPT ``tutorials/Tutorial_GRN.ipynb``: ``sc.read(...
      "Immune_ALL_human.h5ad")  # 33506 x 12303``, ``ori_batch_col = "batch"``,
      ``obs["celltype"] = obs["final_annotation"]``, ``data_is_raw = False``).
    * ``X`` normalised, log-transformed values; raw counts in ``layers["counts"]`` (scGPT's
      ``data_is_raw = False``; printed ``AnnData`` summaries of this file in public notebooks list
      ``obs: 'batch', 'chemistry', 'data_type', 'dpt_pseudotime', 'final_annotation', 'mt_frac',
      'n_counts', 'n_genes', 'sample_ID', 'size_factors', 'species', 'study', 'tissue'`` and
      ``layers: 'counts'``; Open Problems lists the scIB human immune dataset at 33506 x 12303 with layers
      ``counts, normalized``). Some batches are Smart-seq2, whose "counts" need not be integers: the
      report lists non-integer values per batch instead of assuming.

``gears_zip`` - Adamson et al. 2016 (*Cell* 167:1867) Perturb-seq as packaged by GEARS
    ``https://dataverse.harvard.edu/api/access/datafile/6154417`` (``snap-stanford/GEARS``
    ``gears/pertdata.py``, ``PertData.load(data_name="adamson")``; the same URL in scGPT ``data/README.md``).
    GEARS extracts the zip into its data folder and reads ``<data folder>/adamson/perturb_processed.h5ad``
    (``pertdata.py`` + ``utils.zip_data_download_wrapper``), so the member is
    ``adamson/perturb_processed.h5ad``; a newer GEARS flattens a single top folder, so a zip whose only
    ``perturb_processed.h5ad`` sits elsewhere is accepted too (and reported). Layout: ``obs["condition"]``
    ``"ctrl"`` for controls, ``"A+ctrl"`` single, ``"A+B"`` double perturbations; ``obs["cell_type"]``;
    ``var["gene_name"]`` gene symbols (GEARS ``demo/data_tutorial.ipynb``, ``pertdata.new_data_process``
    checks these three columns); published summaries of the Adamson file show 68,603 x 5,060 with ``obs:
    'condition', 'cell_type', 'dose_val', 'control', 'condition_name'`` and no layers. ``X`` is
    log-normalised (GEARS ``data_tutorial``: ``normalize_total`` then ``log1p``, 5,000 HVGs), so this file
    holds **no raw counts**: the converter keeps the published values in ``layers["log_normalized"]``,
    leaves ``X`` empty (``None``) and says so in the report; ``cellgraph expression`` then refuses it with
    "X is missing" rather than reading log values as counts. Should a GEARS file carry integer
    ``layers["counts"]`` (some packagings of Norman 2019 do), those become ``X``.

Command line (``cellgraph datasets``, :mod:`cellgraph.cli.datasets`; what ``workflow/rules/datasets.smk`` calls)::

    cellgraph datasets --format h5ad --in Immune_ALL_human.h5ad --out human_immune.h5ad \
        --report human_immune.report.json --label-key final_annotation --batch-key batch --counts-layer counts
"""

from __future__ import annotations

import json
import logging
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from . import atomic_path, read_h5ad, require_file, write_json

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "convert_human_immune", "convert_gears", "convert", "write_dataset"]

FORMATS = ("h5ad", "gears_zip")
GEARS_MEMBER = "adamson/perturb_processed.h5ad"
REPORT_KEY = "conversion_report"  # uns key: the report as a JSON string (None-safe in h5ad)
LOG_LAYER = "log_normalized"


def _require_obs(adata, key: str, what: str, role: str) -> pd.Series:
    if key not in adata.obs.columns:
        raise InputError(f"{what}: obs has no {role} column {key!r}; obs columns present: "
                         f"{', '.join(map(str, adata.obs.columns)) or '(none)'}")
    col = adata.obs[key]
    n_missing = int(col.isna().sum())
    if n_missing:
        raise InputError(f"{what}: obs[{key!r}] ({role}) has {n_missing} missing values; every cell needs one")
    return col.astype(str)


def _values(x):
    """The stored values of a dense or sparse matrix (sparse: the non-zeros only)."""
    return x.data if sp.issparse(x) else np.asarray(x).ravel()


def _matrix_summary(x, what: str, field: str) -> dict[str, Any]:
    """Check ``x`` is finite; describe it (integer? negative? max). InputError naming file and field."""
    v = _values(x)
    n_bad = int(np.count_nonzero(~np.isfinite(v)))
    if n_bad:
        raise InputError(f"{what}: {field} has {n_bad} NaN/infinite values; expected finite expression values")
    n_frac = int(np.count_nonzero(v != np.round(v)))
    return {"field": field, "dtype": str(v.dtype), "sparse": bool(sp.issparse(x)),
            "integer": n_frac == 0, "non_integer_values": n_frac, "negative_values": int(np.count_nonzero(v < 0)),
            "max": float(v.max()) if v.size else 0.0}


def _as_counts(x, what: str, field: str) -> sp.csr_matrix:
    x = sp.csr_matrix(x) if not sp.issparse(x) else x.tocsr()
    n_neg = int(np.count_nonzero(x.data < 0))
    if n_neg:
        raise InputError(f"{what}: {field} has {n_neg} negative values; raw counts cannot be negative")
    return x.astype(np.float32)


def _noninteger_by_group(x, groups: pd.Series) -> dict[str, int]:
    x = sp.csr_matrix(x) if not sp.issparse(x) else x.tocsr()
    frac = x.copy()
    frac.data = (frac.data != np.round(frac.data)).astype(np.int64)
    per_cell = np.asarray(frac.sum(axis=1)).ravel()
    out = pd.Series(per_cell, index=groups.to_numpy()).groupby(level=0).sum()
    return {str(k): int(v) for k, v in out.items() if v}


def _label_counts(col: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in col.value_counts().sort_index().items()}


def _found(adata) -> dict[str, list[str]]:
    return {"obs_columns": [str(c) for c in adata.obs.columns], "var_columns": [str(c) for c in adata.var.columns],
            "layers": [str(k) for k in adata.layers.keys()],
            "var_names_example": [str(v) for v in adata.var_names[:5]]}


def _check_names(adata, what: str) -> None:
    for axis, names in (("obs", adata.obs_names), ("var", adata.var_names)):
        if not names.is_unique:
            dup = names[names.duplicated()].unique()
            raise InputError(f"{what}: {axis}_names has {len(dup)} duplicated names (e.g. "
                             f"{', '.join(map(str, dup[:5]))}); they must be unique")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"{what}: empty matrix ({adata.n_obs} cells x {adata.n_vars} genes)")


def convert_human_immune(path: str | Path, *, label_key: str = "final_annotation", batch_key: str | None = "batch",
                         counts_layer: str | None = "counts"):
    """Human Immune (scIB ``Immune_ALL_human.h5ad``, figshare file 25717328) in the project's h5ad contract.

    Parameters
    ----------
    path : the published h5ad: ``X`` [cells, genes] normalised log values, ``layers[counts_layer]``
        [cells, genes] raw counts, ``obs[label_key]`` cell types, ``obs[batch_key]`` batches (layout and its
        sources: module docstring).
    label_key : obs column of the 16 cell types (``final_annotation`` in the published file).
    batch_key : obs column of the batches (``batch``); ``None`` = not checked.
    counts_layer : layer with the raw counts (``counts``). When the layer is absent and ``X`` itself holds
        integers, ``X`` is taken as the counts (reported); ``None`` = the counts are ``X``.

    Returns
    -------
    anndata.AnnData [cells, genes]: ``X`` the raw counts (CSR float32), ``obs`` as published with
    ``obs[label_key]`` (and ``obs[batch_key]``) categorical of str, no layers (the published normalised ``X``
    is dropped: it is derived from the counts). ``uns["conversion_report"]`` is the report as a JSON string:
    cells, genes, label and batch counts, where the counts came from, whether they are integers (and the
    non-integer values per batch), what ``X`` held, the obs/var/layers found.

    Raises
    ------
    InputError
        Unreadable file (not an h5ad); ``label_key``/``batch_key`` missing from obs (the columns present are
        listed) or with missing values; no counts (``counts_layer`` absent and ``X`` not integer: the layers
        present are listed); NaN/infinite values in the counts or ``X``; negative counts; duplicated names.
    """
    path = require_file(path, "human immune h5ad")
    what = f"{path}"
    adata = read_h5ad(path, what)
    _check_names(adata, what)
    labels = _require_obs(adata, label_key, what, "label")
    batches = _require_obs(adata, batch_key, what, "batch") if batch_key else None
    published_x = _matrix_summary(adata.X, what, "X")
    if counts_layer is not None and counts_layer in adata.layers:
        source, x = f"layers[{counts_layer!r}]", adata.layers[counts_layer]
    elif counts_layer is None or published_x["integer"]:
        source, x = "X", adata.X
    else:
        raise InputError(f"{what}: no layer {counts_layer!r} (raw counts) and X holds non-integer (normalised) "
                         f"values; layers present: {', '.join(map(str, adata.layers.keys())) or '(none)'}")
    counts = _matrix_summary(x, what, source)
    report = {"format": "h5ad", "dataset": "human_immune", "input": str(path), "cells": int(adata.n_obs),
              "genes": int(adata.n_vars), "label_key": label_key, "n_labels": int(labels.nunique()),
              "label_counts": _label_counts(labels), "batch_key": batch_key,
              "batch_counts": _label_counts(batches) if batches is not None else None,
              "counts_from": source, "counts_integer": counts["integer"], "counts": counts,
              "non_integer_counts_by_batch": (_noninteger_by_group(x, batches)
                                              if batches is not None and not counts["integer"] else {}),
              "published_X": published_x, "found": _found(adata), "notes": []}
    if source == "X" and counts_layer is not None:
        report["notes"].append(f"layer {counts_layer!r} absent; X holds integers and is taken as the counts")
    if not counts["integer"]:
        report["notes"].append("the counts hold non-integer values (see non_integer_counts_by_batch); "
                               "cellgraph expression refuses them until those cells are removed or rounded")
    out = _contract(adata, _as_counts(x, what, source), {label_key: labels, **({batch_key: batches} if batches
                                                                                is not None else {})})
    out.uns[REPORT_KEY] = json.dumps(report)
    return out


def _contract(adata, x, categorical: dict[str, pd.Series], layers: dict | None = None):
    """A new AnnData with ``x`` as X, the published obs/var, ``categorical`` columns as categories of str."""
    import anndata as ad

    obs = adata.obs.copy()
    for key, col in categorical.items():
        obs[key] = pd.Categorical(col.to_numpy())
    return ad.AnnData(X=x, obs=obs, var=adata.var.copy(), layers=layers or None)


def _gears_member(zf: zipfile.ZipFile, member: str, what: str) -> tuple[str, list[str]]:
    names = zf.namelist()
    if member in names:
        return member, []
    base = Path(member).name
    same = [n for n in names if Path(n).name == base and not n.endswith("/")]
    if len(same) == 1:
        return same[0], [f"member {member!r} absent; used the zip's only {base!r}: {same[0]!r}"]
    raise InputError(f"{what}: no member {member!r} in the zip" + (f"; {len(same)} files named {base!r}: {same}"
                     if same else f"; it has {len(names)} members, for example {names[:5]}"))


def convert_gears(path_zip: str | Path, *, member: str = GEARS_MEMBER, label_key: str = "cell_type",
                  perturbation_key: str = "condition", control: str = "ctrl", workdir: str | Path | None = None):
    """A GEARS Perturb-seq zip (Adamson 2016: dataverse datafile 6154417) in the project's h5ad contract.

    Parameters
    ----------
    path_zip : the zip GEARS downloads; ``member`` inside it is GEARS' ``perturb_processed.h5ad``: ``X``
        [cells, genes] log-normalised values, ``obs[perturbation_key]`` (``ctrl``, ``A+ctrl``, ``A+B``),
        ``obs[label_key]``, ``var["gene_name"]`` (layout and its sources: module docstring).
    member : the h5ad inside the zip (``adamson/perturb_processed.h5ad``); absent, the zip's single file of
        the same base name is used (reported).
    label_key : obs column of the cell type (``cell_type``; K562 for Adamson).
    perturbation_key : obs column of the perturbation condition (``condition``).
    control : the condition of control cells (``ctrl``).
    workdir : folder for the temporary extraction (default: the system's temporary folder).

    Returns
    -------
    anndata.AnnData [cells, genes]: ``layers["log_normalized"]`` the published ``X`` (CSR float32); ``X`` the
    raw counts when the file has integer ``layers["counts"]``, otherwise ``None`` (GEARS' Adamson file holds
    no counts: reported, never replaced by the log values). ``obs`` as published plus ``obs["targets"]``:
    the perturbed genes of ``perturbation_key`` without the ``ctrl`` placeholder (``CREB1+ctrl`` ->
    ``CREB1``, ``A+B`` -> ``A+B``, ``ctrl`` -> ``ctrl``). ``uns["conversion_report"]``: the report as JSON
    (cells, genes, label and perturbation counts, control cells, where counts are, what X held).

    Raises
    ------
    InputError
        ``path_zip`` not a zip file; ``member`` missing (a few members are listed); the member not an h5ad;
        ``label_key``/``perturbation_key`` missing from obs or with missing values; no control cells;
        NaN/infinite values in ``X``; negative values in the counts; duplicated names.
    """
    path_zip = require_file(path_zip, "GEARS zip")
    try:
        with zipfile.ZipFile(path_zip) as zf, tempfile.TemporaryDirectory(dir=workdir) as tmp:
            used, notes = _gears_member(zf, member, str(path_zip))
            h5 = Path(zf.extract(used, path=tmp))
            what = f"{path_zip}:{used}"
            adata = read_h5ad(h5, what)
    except zipfile.BadZipFile as err:
        raise InputError(f"{path_zip}: not a zip file ({err}); expected the GEARS dataverse archive") from err
    _check_names(adata, what)
    labels = _require_obs(adata, label_key, what, "label")
    conditions = _require_obs(adata, perturbation_key, what, "perturbation")
    n_control = int((conditions == control).sum())
    if n_control == 0:
        raise InputError(f"{what}: no control cells: no obs[{perturbation_key!r}] equals {control!r}; "
                         f"values are, for example, {sorted(conditions.unique())[:5]}")
    published_x = _matrix_summary(adata.X, what, "X")
    counts, x = None, None
    if "counts" in adata.layers:
        counts = _matrix_summary(adata.layers["counts"], what, "layers['counts']")
        if counts["integer"]:
            x = _as_counts(adata.layers["counts"], what, "layers['counts']")
    if x is None:
        notes.append("no raw counts in this file: X holds log-normalised values (GEARS: normalize_total + log1p), "
                     f"kept as layers[{LOG_LAYER!r}]; X is left empty so no stage reads them as counts")
    targets = conditions.map(lambda c: _targets(c, control))
    report = {"format": "gears_zip", "input": str(path_zip), "member": used, "cells": int(adata.n_obs),
              "genes": int(adata.n_vars), "label_key": label_key, "n_labels": int(labels.nunique()),
              "label_counts": _label_counts(labels), "perturbation_key": perturbation_key, "control": control,
              "control_cells": n_control, "n_conditions": int(conditions.nunique()),
              "condition_counts": _label_counts(conditions), "n_target_genes": len(_genes(targets, control)),
              "counts_from": "layers['counts']" if x is not None else None,
              "counts_integer": None if x is None else True, "counts": counts, "published_X": published_x,
              "published_X_kept_as": f"layers[{LOG_LAYER!r}]", "gene_name_column": "gene_name" in adata.var.columns,
              "found": _found(adata), "notes": notes}
    logn = sp.csr_matrix(adata.X, dtype=np.float32) if not sp.issparse(adata.X) else adata.X.tocsr().astype(np.float32)
    out = _contract(adata, x, {label_key: labels, perturbation_key: conditions, "targets": targets},
                    layers={LOG_LAYER: logn})
    out.uns[REPORT_KEY] = json.dumps(report)
    return out


def _targets(condition: str, control: str) -> str:
    genes = [g for g in condition.split("+") if g and g != control]
    return "+".join(genes) if genes else control


def _genes(targets: pd.Series, control: str) -> set[str]:
    return {g for t in targets.unique() for g in t.split("+") if g != control}


def convert(fmt: str, path: str | Path, **options):
    """Dispatch to :func:`convert_human_immune` (``h5ad``) or :func:`convert_gears` (``gears_zip``); options
    whose value is ``None`` take the converter's default. InputError for an unknown format.

    Parameters
    ----------
    fmt : str
        One of :data:`FORMATS`: ``"h5ad"`` or ``"gears_zip"``.
    path : str or pathlib.Path
        The published file (the h5ad, or the GEARS zip).
    **options
        Keyword options of the chosen converter (``label_key``, ``batch_key``, ``counts_layer``; or
        ``member``, ``label_key``, ``perturbation_key``, ``control``, ``workdir``); ``None`` values are dropped.

    Returns
    -------
    anndata.AnnData
        [cells, genes] in the project's h5ad contract, with ``uns["conversion_report"]`` (see the converter).

    Raises
    ------
    InputError
        ``fmt`` is not a known format; and whatever the converter raises.
    """
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    fn = convert_human_immune if fmt == "h5ad" else convert_gears
    return fn(path, **{k: v for k, v in options.items() if v is not None})


def write_dataset(adata, out: str | Path, report_path: str | Path | None = None) -> dict:
    """Write ``adata`` to ``out`` and its report (``uns["conversion_report"]``, plus ``output``) as JSON to
    ``report_path`` (default: ``out`` with ``.report.json``), both atomically (:func:`cellgraph.io.atomic_path`).
    Returns the report.

    Parameters
    ----------
    adata : anndata.AnnData
        A converted dataset (:func:`convert`); written gzip-compressed.
    out : str or pathlib.Path
        Output ``.h5ad`` file.
    report_path : str or pathlib.Path, optional
        Output JSON report; default ``out`` with its suffix replaced by ``.report.json``.

    Returns
    -------
    dict
        The conversion report (``{}`` when ``adata`` has none) plus ``output``: ``str(out)``.
    """
    report = json.loads(adata.uns.get(REPORT_KEY, "{}"))
    report["output"] = str(out)
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp, compression="gzip")
    write_json(report_path or Path(out).with_suffix(".report.json"), report)
    return report
