r"""Expression stage: QC, normalisation, highly variable genes, Leiden clusters and cell splits.

Preprocessing follows GREmLN (Zhang et al. 2025, appendix A.2), built from scanpy's ``pp``/``tl``
functions (Wolf, Angerer & Theis 2018):

0. **Input**: raw counts from ``X`` or from ``layers[counts_layer]`` (``--counts-layer``, e.g. the scanpy
   layout with normalised ``X``). Gene ids: the type of ``var_names`` (HGNC symbols, Ensembl gene ids
   ``ENSG...`` with an optional version suffix, or Entrez ids) is detected by pattern (``--gene-id-type
   auto``); Ensembl and Entrez ids are mapped to HGNC symbols with the shipped id map
   (``hs_ensg_entrez_symbol.tsv``, ``--idmap``); ids with no or several symbols and symbols hit by several
   ids are dropped and counted, the original id stays in ``var["gene_id"]``. Fewer than
   ``min_mapped_fraction`` of the genes mapped (or, for symbols, known to the map) is an error.
1. **Cell QC**, in this order, each counted in ``report.json``: total UMI per cell ``>= min_counts``
   and ``<= max_counts`` (``sc.pp.filter_cells``), detected genes per cell ``>= min_genes``; then cell
   types with fewer than ``min_cells_per_type`` kept cells are dropped (too small to split), counted per
   type and named in a warning.
2. **Gene QC**: genes detected in fewer than ``min_cells`` of the kept cells are dropped
   (``sc.pp.filter_genes``).
3. **Normalisation**: ``layers["counts"]`` keeps the raw counts; ``X`` becomes
   :math:`\log(1 + \mathrm{target\_sum} \cdot x_{cg} / \sum_{g'} x_{cg'})` (``sc.pp.normalize_total``
   then ``sc.pp.log1p``; natural log; with ``target_sum = 1e6`` this is log1p CPM).
4. **Highly variable genes**: ``sc.pp.highly_variable_genes(flavor="seurat")`` on the log data (Satija
   et al. 2015, binned normalised dispersion). The ``seurat_v3`` flavour of the paper needs
   ``scikit-misc``, which is not a dependency of cellgraph, so the Seurat flavour is used instead.
5. **Leiden clusters** (Traag, Waltman & van Eck 2019): PCA on the HVGs (``sc.pp.pca``), a kNN graph
   (``sc.pp.neighbors``) and ``sc.tl.leiden(flavor="igraph", n_iterations=2, directed=False)``.
6. **Splits**: a fraction of the *cell types* (at least one, or an explicit list) is held out as an
   unseen-graph set (``split == "heldout"``); the cells of the other types are split into
   ``train``/``val``/``test`` stratified by type (``sklearn.model_selection.train_test_split``).

Every random choice is seeded from ``seed`` (``--seed``).

:func:`preprocess` runs the whole stage in memory and returns the AnnData and the report; the command line
(:mod:`cellgraph.cli.expression`) writes them (docs/design.md section 2): ``<out-dir>/adata.h5ad`` and
``<out-dir>/report.json``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from ..io import read_h5ad, require_file

log = logging.getLogger(__name__)

__all__ = [
    "SPLITS",
    "DEFAULTS",
    "read_counts",
    "quality_control",
    "normalize_and_cluster",
    "choose_heldout_types",
    "split_cells",
    "preprocess",
    "load_input",
    "GENE_ID_TYPES",
    "DEFAULT_IDMAP",
    "detect_gene_id_type",
    "map_gene_ids",
]

SPLITS = ("train", "val", "test", "heldout")

# Defaults equal config/config.yaml, section `expression:`.
DEFAULTS: dict[str, Any] = {
    "min_counts": 500,
    "max_counts": 20000,
    "min_genes": 200,
    "min_cells": 10,
    "target_sum": 1e6,
    "n_top_genes": 1000,
    "leiden_resolution": 1.0,
    "n_neighbors": 15,
    "n_pcs": 30,
    "heldout_fraction": 0.15,
    "heldout_types": [],
    "val_fraction": 0.1,
    "test_fraction": 0.2,
    "counts_layer": None,
    "gene_id_type": "auto",
    "min_mapped_fraction": 0.5,
    "min_cells_per_type": 20,
}
HVG_FLAVOR = "seurat"
GENE_ID_TYPES = ("auto", "symbol", "ensembl", "entrez")
# var_names patterns: Ensembl gene ids of any species (ENSG, ENSMUSG, ...) with an optional version suffix
ID_PATTERNS = {"ensembl": re.compile(r"^ENS[A-Z]*G\d{11}(\.\d+)?$"), "entrez": re.compile(r"^\d+$")}
# the id map shipped with the repository (config data.idmap.ensg); the workflow passes it with --idmap
DEFAULT_IDMAP = Path(__file__).resolve().parents[3] / "resources/demo/networks/idmap/hs_ensg_entrez_symbol.tsv"


# --------------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------------


def _check_params(p: dict[str, Any]) -> None:
    """Raise InputError for parameter values no data could satisfy."""
    for key in ("min_counts", "max_counts", "min_genes", "min_cells"):
        if p[key] < 0:
            raise InputError(f"--{key.replace('_', '-')} must be >= 0, got {p[key]}")
    if p["max_counts"] < p["min_counts"]:
        raise InputError(f"--max-counts ({p['max_counts']}) is below --min-counts ({p['min_counts']})")
    if not p["target_sum"] > 0:
        raise InputError(f"--target-sum must be > 0, got {p['target_sum']}")
    for key in ("n_top_genes", "n_neighbors", "n_pcs"):
        if p[key] < 2:
            raise InputError(f"--{key.replace('_', '-')} must be >= 2, got {p[key]}")
    if not p["leiden_resolution"] > 0:
        raise InputError(f"--leiden-resolution must be > 0, got {p['leiden_resolution']}")
    if not p["heldout_types"] and not 0 <= p["heldout_fraction"] < 1:
        raise InputError(f"--heldout-fraction must be in [0, 1), got {p['heldout_fraction']}")
    if not 0 <= p["min_mapped_fraction"] <= 1:
        raise InputError(f"--min-mapped-fraction must be in [0, 1], got {p['min_mapped_fraction']}")
    if p["min_cells_per_type"] < 0:
        raise InputError(f"--min-cells-per-type must be >= 0, got {p['min_cells_per_type']}")
    if p["gene_id_type"] not in GENE_ID_TYPES:
        raise InputError(f"--gene-id-type must be one of {', '.join(GENE_ID_TYPES)}, got {p['gene_id_type']!r}")
    if p["counts_layer"] is not None and not (isinstance(p["counts_layer"], str) and p["counts_layer"]):
        raise InputError(f"--counts-layer must be a layer name or null (use X), got {p['counts_layer']!r}")
    v, t = p["val_fraction"], p["test_fraction"]
    if not (v > 0 and t > 0 and v + t < 1):
        raise InputError(
            f"--val-fraction ({v}) and --test-fraction ({t}) must both be > 0 with a sum below 1, "
            "otherwise the train, val or test split is empty"
        )


def read_counts(path: str | Path, label_key: str, counts_layer: str | None = None):
    """Read an h5ad and check that ``X`` (or ``layers[counts_layer]``) holds raw counts and ``obs[label_key]``
    the cell-type labels.

    Parameters
    ----------
    path : path of an ``.h5ad`` file; ``X`` [cells, genes] raw UMI counts (dense or sparse).
    label_key : obs column with the cell-type labels.
    counts_layer : None = the counts are ``X``; a name = the counts are ``layers[counts_layer]`` [cells, genes]
        (the scanpy layout with normalised ``X``); that layer then replaces ``X`` and is removed from
        ``layers``, the input ``X`` is discarded.

    Returns
    -------
    anndata.AnnData with the counts in ``X`` as CSR float32 and ``obs[label_key]`` categorical of str.

    Raises
    ------
    InputError
        File missing or unreadable; ``label_key`` not in obs (the available columns are listed) or
        with missing labels; duplicate obs/var names; ``counts_layer`` not among the layers (the layers
        present are listed); NaN/infinite, negative or non-integer counts (the message names X or the
        layer).
    """
    path = require_file(path, "expression input")
    adata = read_h5ad(path)
    if label_key not in adata.obs.columns:
        raise InputError(
            f"{path}: obs has no label column {label_key!r} (--label-key); available obs columns: "
            f"{', '.join(map(str, adata.obs.columns)) or '(none)'}"
        )
    if label_key in ("split", "leiden"):
        raise InputError(f"--label-key {label_key!r} clashes with the obs column this stage writes")
    labels = adata.obs[label_key]
    n_missing = int(labels.isna().sum())
    if n_missing:
        raise InputError(f"{path}: obs[{label_key!r}] has {n_missing} missing labels; every cell needs a type")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"{path}: X is empty ({adata.n_obs} cells x {adata.n_vars} genes)")
    for axis, names in (("obs", adata.obs_names), ("var", adata.var_names)):
        if not names.is_unique:
            dup = names[names.duplicated()].unique()
            raise InputError(
                f"{path}: {axis}_names has {len(dup)} duplicated names (e.g. {', '.join(map(str, dup[:5]))}); "
                "they must be unique"
            )

    if counts_layer is None:
        x, where = adata.X, "X"
    else:
        where = f"layers[{counts_layer!r}]"
        if counts_layer not in adata.layers:
            raise InputError(
                f"{path}: no layer {counts_layer!r} (--counts-layer); layers present: "
                f"{', '.join(map(str, adata.layers.keys())) or '(none)'}"
            )
        x = adata.layers[counts_layer]
        del adata.layers[counts_layer]
    if x is None:
        raise InputError(f"{path}: {where} is missing; expected raw UMI counts")
    adata.X = _checked_counts(x, path, where)
    adata.X.eliminate_zeros()
    adata.obs[label_key] = pd.Categorical(labels.astype(str))
    return adata


def _checked_counts(x, path: Path, where: str) -> sp.csr_matrix:
    """``x`` as CSR float32 after checking it holds raw counts; InputError naming ``where`` otherwise."""
    x = sp.csr_matrix(x) if not sp.issparse(x) else x.tocsr()
    values = x.data
    n_bad = int(np.count_nonzero(~np.isfinite(values)))
    n_neg = int(np.count_nonzero(values < 0))
    if n_bad or n_neg:
        raise InputError(
            f"{path}: {where} has {n_bad} NaN/infinite and {n_neg} negative values; "
            "expected raw UMI counts (finite, non-negative integers)"
        )
    n_frac = int(np.count_nonzero(values != np.round(values)))
    if n_frac:
        raise InputError(
            f"{path}: {where} has {n_frac} non-integer values; {where} must hold raw counts (integers), "
            "not normalised or log-transformed data" + ("" if where != "X" else " (raw counts in a layer: "
                                                        "--counts-layer)")
        )
    return x.astype(np.float32)


def detect_gene_id_type(names: Sequence[str]) -> tuple[str, dict[str, float]]:
    """Guess the id type of gene names by pattern.

    Parameters
    ----------
    names : gene names [genes] (``var_names``).

    Returns
    -------
    (type, fractions): ``"ensembl"`` (``ENS[species]G`` + 11 digits, optional ``.version``) or ``"entrez"``
    (digits only) when at least half of the names match that pattern (the larger share wins), else
    ``"symbol"``; ``fractions`` maps ``ensembl``/``entrez`` to the fraction of names matching.
    """
    names = [str(n) for n in names]
    n = max(len(names), 1)
    frac = {k: sum(bool(rx.match(x)) for x in names) / n for k, rx in ID_PATTERNS.items()}
    best = max(frac, key=frac.get)
    return (best if frac[best] >= 0.5 else "symbol"), frac


def _read_idmap(idmap: str | Path, column: str) -> dict[str, set]:
    """id (column ``ensg`` or ``entrez`` of the id map) -> set of HGNC symbols."""
    from ..graphs.networks import read_table

    table = read_table(idmap, "gene id map (--idmap)", ["ensg", "entrez", "symbol"])
    out: dict[str, set] = {}
    for key, symbol in zip(table[column], table["symbol"]):
        if key != "NA":
            out.setdefault(key, set()).add(symbol)
    return out


def map_gene_ids(adata, idmap: str | Path, gene_id_type: str = "auto", min_mapped_fraction: float = 0.5,
                 path: str | Path = "input"):
    """Give ``adata`` HGNC symbols as ``var_names``, mapping Ensembl or Entrez ids with the id map.

    Parameters
    ----------
    adata : AnnData [cells, genes]; ``var_names`` symbols, Ensembl gene ids (version suffix allowed) or
        Entrez ids.
    idmap : TSV with columns ``ensg, entrez, symbol`` (``hs_ensg_entrez_symbol.tsv``).
    gene_id_type : ``auto`` (see :func:`detect_gene_id_type`), ``symbol``, ``ensembl`` or ``entrez``.
    min_mapped_fraction : least fraction of the genes that must map to one symbol (for symbols: be a
        symbol of the id map; unknown symbols are kept).
    path : the input file, for messages.

    Returns
    -------
    (AnnData, dict). Symbols: ``adata`` unchanged. Ensembl/Entrez: a copy [cells, mapped genes] with symbol
    ``var_names`` and the input id in ``var["gene_id"]``; ids with no symbol (``unmapped``), several
    symbols (``ambiguous``) and every id of a symbol hit by several ids (``collisions``) are dropped,
    counted in the dict and in a warning.

    Raises
    ------
    InputError
        Fewer than ``min_mapped_fraction`` of the genes mapped; the message names the file, the id type
        and the fraction.
    """
    names = pd.Index(adata.var_names.astype(str))
    detected, frac = detect_gene_id_type(names)
    kind = detected if gene_id_type == "auto" else gene_id_type
    rep: dict[str, Any] = {"type": kind, "requested": gene_id_type, "detected": detected,
                           "pattern_fractions": {k: round(v, 4) for k, v in frac.items()}, "genes_in": len(names),
                           "idmap": str(idmap)}
    column = {"ensembl": "ensg", "entrez": "entrez", "symbol": "ensg"}[kind]
    id_to_syms = _read_idmap(idmap, column)
    if kind == "symbol":
        known = {s for syms in id_to_syms.values() for s in syms}
        n_ok = int(names.isin(list(known)).sum())
        rep.update(known_symbols=n_ok, fraction_mapped=round(n_ok / len(names), 4), genes_out=len(names))
        _require_mapped(n_ok, len(names), min_mapped_fraction, path, kind, "are HGNC symbols of the id map")
        return adata, rep
    keys = names.str.replace(r"\.\d+$", "", regex=True) if kind == "ensembl" else names
    syms = [id_to_syms.get(k, set()) for k in keys]
    sym = pd.Series([next(iter(s)) if len(s) == 1 else "" for s in syms], index=names)
    hits = sym[sym != ""].value_counts()
    collide = sym.isin(hits.index[hits > 1])
    keep = (sym != "") & ~collide
    rep.update(unmapped=sum(len(s) == 0 for s in syms), ambiguous=sum(len(s) > 1 for s in syms),
               collisions=int(collide.sum()), collision_symbols=int((hits > 1).sum()),
               genes_out=int(keep.sum()), fraction_mapped=round(float(keep.mean()), 4))
    log.log(logging.WARNING if rep["genes_out"] < len(names) else logging.INFO,
            "gene ids (%s) -> HGNC symbols: %d of %d mapped; dropped %d unmapped, %d with several symbols, "
            "%d sharing a symbol with another id", kind, rep["genes_out"], len(names), rep["unmapped"],
            rep["ambiguous"], rep["collisions"])
    _require_mapped(int(keep.sum()), len(names), min_mapped_fraction, path, kind, "map to one HGNC symbol")
    out = adata[:, keep.to_numpy()].copy()
    out.var["gene_id"] = names[keep.to_numpy()].to_numpy()
    out.var_names = pd.Index(sym[keep].to_numpy(), dtype=str)
    return out, rep


def _require_mapped(n_ok: int, n: int, min_fraction: float, path, kind: str, what: str) -> None:
    if n_ok < min_fraction * n or n_ok == 0:
        raise InputError(
            f"{path}: var_names read as {kind} ids (--gene-id-type); only {n_ok} of {n} genes "
            f"({n_ok / n:.1%}) {what}; expected at least {min_fraction:.0%} (--min-mapped-fraction). "
            "Expected human HGNC symbols, Ensembl gene ids (ENSG...) or Entrez ids"
        )


def _types_removed(labels: pd.Series, keep: np.ndarray) -> dict[str, int]:
    """Types of which the cell filters kept no cell: {type: cells in the input}, named in a warning."""
    before = labels.astype(str).value_counts()
    after = labels[keep].astype(str).value_counts()
    removed = {str(t): int(n) for t, n in before.items() if after.get(t, 0) == 0}
    if removed:
        log.warning("cell types with no cell left after cell QC (min_counts, max_counts, min_genes): %s",
                    dict(sorted(removed.items())))
    return dict(sorted(removed.items()))


def _drop_small_types(labels: pd.Series, keep: np.ndarray, min_cells_per_type: int) -> tuple[np.ndarray, dict]:
    """Unmark the cells of types with fewer than ``min_cells_per_type`` kept cells; returns (keep, {type: n})."""
    sizes = labels[keep].astype(str).value_counts()
    small = {str(t): int(n) for t, n in sizes.items() if 0 < n < min_cells_per_type}
    if small:
        keep = keep & ~labels.astype(str).isin(list(small)).to_numpy()
        log.warning("cell types with fewer than %d cells after cell QC dropped: %s", min_cells_per_type, small)
    return keep, dict(sorted(small.items()))


def quality_control(adata, min_counts: int, max_counts: int, min_genes: int, min_cells: int, label_key: str,
                    min_cells_per_type: int = 0):
    """Cell and gene QC of GREmLN appendix A.2 (scanpy ``filter_cells``/``filter_genes``), in sequence.

    Parameters
    ----------
    adata : AnnData [cells, genes] with raw counts in ``X``.
    min_counts, max_counts : bounds on total UMI per cell (inclusive).
    min_genes : minimum detected genes (count > 0) per cell.
    min_cells : minimum cells in which a gene is detected, counted on the kept cells.
    label_key : obs column of the cell types (for the per-type drop counts).
    min_cells_per_type : after the cell filters, the cells of types with fewer kept cells are dropped
        (too small to split; a warning names them); 0 = keep every type.

    Returns
    -------
    (AnnData subset copy, dict) — the dict counts cells in/out per filter, the types with no cell left
    (``types_removed_by_qc``: {type: input cells}), the small types dropped (``small_types_dropped``:
    {type: cells}) and genes dropped.

    Raises
    ------
    InputError
        If a filter removes every cell (or ``min_cells`` every gene), or every type is below
        ``min_cells_per_type``; the message names the filter.
    """
    import scanpy as sc

    report: dict[str, Any] = {"cells_in": int(adata.n_obs), "genes_in": int(adata.n_vars)}
    keep = np.ones(adata.n_obs, dtype=bool)
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    dropped_by_type: dict[str, dict[str, int]] = {}
    for name, kwargs in (
        ("min_counts", {"min_counts": min_counts}),
        ("max_counts", {"max_counts": max_counts}),
        ("min_genes", {"min_genes": min_genes}),
    ):
        passed, _ = sc.pp.filter_cells(adata.X, inplace=False, **kwargs)
        drop = keep & ~passed
        report[f"cells_dropped_{name}"] = int(drop.sum())
        types = adata.obs[label_key][drop].astype(str).value_counts()
        dropped_by_type[name] = {str(k): int(v) for k, v in types.items() if v}
        keep &= passed
        if not keep.any():
            lo, hi = (totals.min(), totals.max()) if name != "min_genes" else (
                adata.X.getnnz(axis=1).min(), adata.X.getnnz(axis=1).max())
            raise InputError(
                f"QC filter {name} = {kwargs[name]} (--{name.replace('_', '-')}) removed every cell "
                f"(observed per-cell {'genes' if name == 'min_genes' else 'total counts'} "
                f"range {lo:g}..{hi:g})"
            )
    report["cells_dropped_by_type"] = dropped_by_type
    labels = adata.obs[label_key]
    report["types_removed_by_qc"] = _types_removed(labels, keep)
    sizes = labels[keep].astype(str).value_counts().to_dict()
    keep, small = _drop_small_types(labels, keep, min_cells_per_type)
    report["cells_dropped_min_cells_per_type"] = int(sum(small.values()))
    report["small_types_dropped"] = small
    if not keep.any():
        raise InputError(
            f"every cell type has fewer than {min_cells_per_type} cells after cell QC (--min-cells-per-type); "
            f"cells per type in obs[{label_key!r}]: {dict(sorted(sizes.items()))}"
        )
    report["cells_out"] = int(keep.sum())
    adata = adata[keep].copy()
    gene_ok, n_cells = sc.pp.filter_genes(adata.X, min_cells=min_cells, inplace=False)
    report["genes_dropped_min_cells"] = int((~gene_ok).sum())
    if not gene_ok.any():
        raise InputError(
            f"QC filter min_cells = {min_cells} (--min-cells) removed every gene "
            f"(the most widely detected gene is in {int(n_cells.max())} of {adata.n_obs} cells)"
        )
    adata = adata[:, gene_ok].copy()
    report["genes_out"] = int(adata.n_vars)
    return adata, report


def normalize_and_cluster(
    adata, target_sum: float, n_top_genes: int, n_pcs: int, n_neighbors: int, leiden_resolution: float,
    seed: int,
) -> dict[str, Any]:
    """Normalise, log-transform, mark HVGs and add Leiden clusters, in place.

    ``layers["counts"]`` <- raw counts (CSR float32); ``X`` <- ``log1p(target_sum * counts / total)``
    (CSR float32, natural log); ``var["highly_variable"]`` from ``highly_variable_genes(flavor="seurat")``
    on the log data; ``obsm["X_pca"]`` [cells, n_pcs] from PCA of the HVGs; kNN graph in ``obsp``;
    ``obs["leiden"]`` categorical from ``sc.tl.leiden(flavor="igraph", n_iterations=2, directed=False)``.

    Parameters
    ----------
    adata : anndata.AnnData
        QC-filtered cells, raw counts in ``X`` [n_cells, n_genes]; modified in place.
    target_sum : float
        Total per cell after normalisation (``1e6``: log1p CPM).
    n_top_genes : int
        Requested number of HVGs (capped at ``n_genes``).
    n_pcs : int
        Requested number of principal components (capped at ``min(n_cells, n_hvg) - 1``).
    n_neighbors : int
        k of the kNN graph (capped at ``n_cells - 1``).
    leiden_resolution : float
        Leiden resolution parameter.
    seed : int
        ``random_state`` of PCA, kNN graph and Leiden.

    Returns
    -------
    dict
        Report with the caps used: ``{"hvg": {flavor, on, n_top_genes_requested, n_hvg}, "leiden": {n_pcs,
        n_neighbors, resolution, n_clusters, cluster_sizes}}``.

    Raises
    ------
    InputError
        If fewer than 3 cells remain (no PCA/kNN graph possible).

    References
    ----------
    GREmLN (Zhang et al. 2025) appendix A.2; Satija et al. 2015 (HVGs); Traag, Waltman & van Eck 2019 (Leiden).
    """
    import scanpy as sc

    if adata.n_obs < 3:
        raise InputError(f"only {adata.n_obs} cells passed QC; at least 3 are needed for PCA and Leiden")
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)

    n_hvg = min(n_top_genes, adata.n_vars)
    sc.pp.highly_variable_genes(adata, n_top_genes=n_hvg, flavor=HVG_FLAVOR)
    adata.var["highly_variable"] = adata.var["highly_variable"].astype(bool)
    hv = adata.var["highly_variable"].to_numpy()
    n_comps = min(n_pcs, int(hv.sum()) - 1, adata.n_obs - 1)
    sc.pp.pca(adata, n_comps=n_comps, mask_var="highly_variable", random_state=seed)
    k = min(n_neighbors, adata.n_obs - 1)
    sc.pp.neighbors(adata, n_neighbors=k, n_pcs=n_comps, random_state=seed)
    sc.tl.leiden(
        adata, resolution=leiden_resolution, flavor="igraph", n_iterations=2, directed=False, random_state=seed
    )
    sizes = adata.obs["leiden"].value_counts().sort_index()
    return {
        "hvg": {
            "flavor": HVG_FLAVOR,
            "on": "log1p-normalised X",
            "n_top_genes_requested": int(n_top_genes),
            "n_hvg": int(hv.sum()),
        },
        "leiden": {
            "n_pcs": int(n_comps),
            "n_neighbors": int(k),
            "resolution": float(leiden_resolution),
            "n_clusters": int(adata.obs["leiden"].nunique()),
            "cluster_sizes": {str(c): int(n) for c, n in sizes.items()},
        },
    }


def choose_heldout_types(
    types: Sequence[str], heldout_fraction: float, heldout_types: Sequence[str], seed: int, label_key: str = "label"
) -> list[str]:
    """Cell types held out as the unseen-graph set.

    Parameters
    ----------
    types : sequence of str
        The distinct cell types present (after QC).
    heldout_fraction : float
        Fraction of types drawn when ``heldout_types`` is empty: ``max(1, round(fraction * n_types))`` types,
        drawn without replacement from the sorted types.
    heldout_types : sequence of str
        Explicit list; each must be one of ``types``. Empty = draw ``heldout_fraction`` of the types.
    seed : int
        Seed of ``numpy.random.default_rng`` for the draw.
    label_key : str, default "label"
        Obs column of the cell types; only named in the error messages.

    Returns
    -------
    list of str
        Sorted held-out types; at least one type is held out and at least one is kept.

    Raises
    ------
    InputError
        Unknown explicit type, or a choice that holds out every type.
    """
    types = sorted(map(str, types))
    if heldout_types:
        unknown = sorted(set(heldout_types) - set(types))
        if unknown:
            raise InputError(
                f"--heldout-types {unknown} not found in obs[{label_key!r}]; "
                f"known types: {', '.join(types)}"
            )
        chosen = sorted(set(heldout_types))
    else:
        n = max(1, int(round(heldout_fraction * len(types))))
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(types, size=min(n, len(types)), replace=False).tolist())
    if len(chosen) >= len(types):
        raise InputError(
            f"holding out {chosen} leaves no cell type of obs[{label_key!r}] for train/val/test "
            f"(types present: {', '.join(types)})"
        )
    return chosen


def split_cells(
    labels: Sequence[str], heldout: Sequence[str], val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Assign each cell to ``train``/``val``/``test``/``heldout``.

    Cells of the ``heldout`` types are ``"heldout"``; the others are split with
    ``sklearn.model_selection.train_test_split`` stratified by type: first train vs the rest
    (``val_fraction + test_fraction``), then the rest into val and test, both with
    ``random_state=seed``.

    Parameters
    ----------
    labels : str array [cells]
        Cell type of each cell.
    heldout : sequence of str
        Held-out cell types (:func:`choose_heldout_types`); their cells are ``"heldout"``.
    val_fraction : float
        Fraction of the seen (not held-out) cells assigned to ``val``.
    test_fraction : float
        Fraction of the seen cells assigned to ``test``.
    seed : int
        ``random_state`` of both stratified splits.

    Returns
    -------
    numpy str array [cells]
        Split name of each cell.

    Raises
    ------
    InputError
        If the stratified split is impossible (a type with too few cells) or leaves a split empty.
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels, dtype=str)
    split = np.full(labels.shape, "heldout", dtype=object)
    seen = np.flatnonzero(~np.isin(labels, list(heldout)))
    try:
        train, rest = train_test_split(
            seen, test_size=val_fraction + test_fraction, stratify=labels[seen], random_state=seed
        )
        val, test = train_test_split(
            rest, test_size=test_fraction / (val_fraction + test_fraction), stratify=labels[rest],
            random_state=seed,
        )
    except ValueError as err:
        counts = pd.Series(labels[seen]).value_counts().to_dict()
        raise InputError(
            f"cannot split the seen cells into train/val/test stratified by type with --val-fraction "
            f"{val_fraction} and --test-fraction {test_fraction} (cells per type: {counts}): {err}"
        ) from err
    for name, idx in (("train", train), ("val", val), ("test", test)):
        if len(idx) == 0:
            raise InputError(
                f"split {name!r} is empty with --val-fraction {val_fraction} and --test-fraction {test_fraction}"
            )
        split[idx] = name
    return split.astype(str)


def load_input(path: Path, label_key: str, p: dict[str, Any], idmap: str | Path | None = None):
    """Read the counts (:func:`read_counts`), drop the other layers and map the gene ids (:func:`map_gene_ids`).

    Parameters
    ----------
    path : Path
        Input h5ad.
    label_key : str
        Obs column with the cell-type labels.
    p : dict
        The full parameter dict (keys of ``DEFAULTS``; ``counts_layer``, ``gene_id_type`` and
        ``min_mapped_fraction`` are used here).
    idmap : str or Path or None, default None
        The id map TSV; None = :data:`DEFAULT_IDMAP`.

    Returns
    -------
    tuple
        (AnnData [cells, genes] with raw counts in ``X`` and no layers, dict for ``report["input"]``).

    Raises
    ------
    InputError
        See :func:`read_counts` and :func:`map_gene_ids`.
    """
    adata = read_counts(path, label_key, p["counts_layer"])
    # Other layers of the input (e.g. a provider's own normalisation) would be stale after QC and could be
    # mistaken for ours: they are dropped and named in report.json.
    dropped_layers = sorted(map(str, adata.layers.keys()))
    for key in dropped_layers:
        del adata.layers[key]
    n_cells, n_genes = int(adata.n_obs), int(adata.n_vars)
    adata, ids = map_gene_ids(adata, idmap or DEFAULT_IDMAP, p["gene_id_type"], p["min_mapped_fraction"], path)
    rep = {"path": str(path), "cells": n_cells, "genes": n_genes, "label_key": label_key,
           "cell_types": sorted(adata.obs[label_key].astype(str).unique()), "layers_dropped": dropped_layers,
           "counts_from": "X" if p["counts_layer"] is None else f"layers[{p['counts_layer']!r}]",
           "gene_ids": ids}
    return adata, rep


def _explicit_heldout(heldout_types: list[str], small: dict[str, int], min_cells_per_type: int) -> list[str]:
    """The explicit held-out types less those QC left with no cell or fewer than ``min_cells_per_type``
    (``small``: {type: cells after cell QC}; a warning names them); InputError if none is left."""
    kept = [t for t in heldout_types if t not in small]
    gone = {t: small[t] for t in heldout_types if t in small}
    if heldout_types and not kept:
        raise InputError(f"every --heldout-types type {heldout_types} has fewer than {max(min_cells_per_type, 1)} "
                         f"cells after cell QC (cells left per type: {gone}; see --min-counts, --max-counts, "
                         "--min-genes and --min-cells-per-type)")
    if gone:
        log.warning("held-out types dropped by QC (cells left): %s", gone)
    return kept


def preprocess(input_path: str | Path, label_key: str = "trueLabel", seed: int = 0,
               idmap: str | Path | None = None, **params: Any):
    """Whole stage in memory: read, map gene ids, QC, normalise, HVGs, Leiden, splits.

    Parameters
    ----------
    input_path : h5ad with raw counts in ``X`` (or ``layers[counts_layer]``) [cells, genes] and
        ``obs[label_key]``.
    label_key : obs column with the cell types.
    seed : seeds the held-out draw, the splits, PCA and Leiden.
    idmap : id map TSV (``ensg, entrez, symbol``) for Ensembl/Entrez ``var_names``; None = the shipped one.
    **params : the keys of ``DEFAULTS`` (config ``expression:``); missing keys take the defaults.

    Returns
    -------
    (AnnData, report dict): the AnnData of docs/design.md section 2 and the content of report.json.
    Explicit held-out types dropped by ``min_cells_per_type`` leave the held-out list (warning).

    Raises
    ------
    InputError
        Bad parameters, bad input file (see :func:`read_counts`), gene ids that do not map
        (:func:`map_gene_ids`), QC removing everything (or every type too small), unknown held-out type
        (or every explicit one too small), or fractions leaving a split empty.
    """
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown parameters {sorted(unknown)}")
    p = {**DEFAULTS, **params}
    p["heldout_types"] = [str(t) for t in (p["heldout_types"] or [])]
    _check_params(p)
    path = Path(input_path)
    adata, input_report = load_input(path, label_key, p, idmap)
    types_in = input_report["cell_types"]
    if p["heldout_types"]:  # fail fast, before the heavy work
        choose_heldout_types(types_in, p["heldout_fraction"], p["heldout_types"], seed, label_key)

    adata, qc = quality_control(adata, p["min_counts"], p["max_counts"], p["min_genes"], p["min_cells"], label_key,
                                p["min_cells_per_type"])
    adata.obs[label_key] = adata.obs[label_key].cat.remove_unused_categories()
    types = sorted(adata.obs[label_key].astype(str).unique())
    removed = {t: 0 for t in qc["types_removed_by_qc"]}
    explicit = _explicit_heldout(p["heldout_types"], {**removed, **qc["small_types_dropped"]},
                                 p["min_cells_per_type"])
    heldout = choose_heldout_types(types, p["heldout_fraction"], explicit, seed, label_key)
    split = split_cells(adata.obs[label_key].astype(str).to_numpy(), heldout, p["val_fraction"],
                        p["test_fraction"], seed)
    adata.obs["split"] = pd.Categorical(split, categories=list(SPLITS))

    clus = normalize_and_cluster(
        adata, p["target_sum"], p["n_top_genes"], p["n_pcs"], p["n_neighbors"], p["leiden_resolution"], seed
    )
    adata.uns["cellgraph"] = {"heldout_types": list(heldout), "label_key": label_key}

    table = pd.crosstab(adata.obs[label_key].astype(str), adata.obs["split"].astype(str))
    table = table.reindex(columns=list(SPLITS), fill_value=0)
    missing = {t: [s for s in ("train", "val", "test") if table.loc[t, s] == 0]
               for t in table.index if t not in heldout}
    missing = {t: s for t, s in missing.items() if s}
    if missing:
        log.warning("cell types absent from some splits: %s", missing)
    report = {
        "input": input_report,
        "seed": seed,
        "params": p,
        "qc": qc,
        "normalisation": {"target_sum": float(p["target_sum"]), "transform": "log1p (natural log)"},
        **clus,
        "splits": {
            "heldout_types": list(heldout),
            "sizes": {s: int((split == s).sum()) for s in SPLITS},
            "per_type": {t: {s: int(table.loc[t, s]) for s in SPLITS} for t in table.index},
            "types_missing_from_splits": missing,
        },
        "output": {"cells": int(adata.n_obs), "genes": int(adata.n_vars)},
    }
    return adata, report
