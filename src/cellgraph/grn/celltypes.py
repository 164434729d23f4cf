r"""grn stage: ARACNe gene regulatory networks per cell type, with a permutation control that can fail.

For every cell type that is not held out, the type's ``train`` cells go through four steps; every step is a
function of this module, usable on its own.

1. **Genes** (:func:`detected_genes`): the highly variable genes (``var["highly_variable"]``) and the
   regulators of ``regulators.txt`` present in the data, each kept for the type only if detected (count
   > 0) in at least ``min_detected_fraction`` of the type's train cells (default 10%); the others are
   counted and named in the report.
2. **Samples** (:func:`sample_matrix`): single cells (default), or metacells summed from raw counts
   (``layers["counts"]``). ``"disjoint"`` metacells (:func:`disjoint_metacells`) group each cell with its
   nearest free neighbours (PCA of the type's log-CPM) until ``metacell_umis`` UMIs (about 10k, as the
   ARACNe3 authors' single-cell pipelines), using every cell once, so samples stay independent and the
   null model holds. ``"knn"`` metacells (each cell plus its ``metacell_k - 1`` nearest neighbours) reuse
   every cell about ``k`` times; they break the independent-sample null and are flagged
   ``null_valid: false`` in the report (the control below shows the false edges they make). Expression is
   ``log1p(CPM)`` of the sample's counts.
3. **Depth-conditional ranks**: in single cells the capture depth (UMIs per cell) makes zeros co-occur in
   shallow cells, a dependence between any two sparse genes. Samples are cut into blocks of
   ``depth_stratum_cells`` by depth and ARACNe ranks each gene within its block before ranking over all
   samples (:func:`cellgraph.grn.aracne.bootstrap_ranks`), which removes what two genes share only through
   depth. On real PBMC types with genes permuted within depth blocks, single cells without this step gave
   2-16 false edges per type; with it, none.
4. **ARACNe** (:func:`cellgraph.grn.aracne.aracne`, engine defaults :data:`cellgraph.grn.aracne.DEFAULTS`):
   per-bootstrap Benjamini-Hochberg over null p-values, DPI, recurrence cut.
5. **Count DPI** (``count_dpi``, :func:`cellgraph.grn.count_dpi.count_dpi`): counting noise weakens a
   sparse gene's dependences, so when the middle gene of a chain or the parent of two siblings is sparse,
   ARACNe's DPI on the observed values keeps the indirect edge. Each final edge is measured again on the
   latent correlation of the samples' counts (Poisson deconvolution of each gene, Gaussian copula per pair)
   and removed when a triangle through a regulator, with both other sides significant, explains it
   (``count_dpi_margin``). ``cellgraph aracne`` (the engine alone, on an expression table) has no such
   step. On planted
   single-cell networks (``bench/aracne.py``, 40 seeds) it lifts precision from 0.86 to 0.96 and keeps
   80% of the true edges found.

**Sub-clusters** (``subclusters``; GREmLN appendix A.1): the type's cells are split by Leiden (scanpy) at
``subcluster_resolution``, steps 2-4 run within each sub-cluster of at least ``subcluster_min_cells`` cells
(smaller ones are counted and skipped), and the sub-cluster networks are consolidated into the type's
network by binomial recurrence (:func:`recurrence_consolidation`): an edge found in ``k`` of ``S``
sub-clusters gets ``P(X >= k)``, ``X ~ Binomial(S, p)``, ``p`` the mean edge density, Benjamini-Hochberg
over the possible edges, kept at ``consolidation_alpha``.

**Permutation control** (:func:`permutation_control`): ``control_permutations`` times, each gene's counts
are permuted across the type's cells within blocks of :data:`CONTROL_BLOCK_CELLS` cells of nearest depth
(so each gene keeps its sparsity and its dependence on depth, and no gene-gene dependence is left), before
any aggregation; metacells are rebuilt from the permuted cells and ARACNe runs with the real run's MI
thresholds and recurrence cut. Every edge it finds is false: the report gives their mean and a 95% Poisson
interval per type beside the real edge count, and the implied FDR (mean false edges / real edges); edges are
counted as distinct regulator-target pairs (:func:`n_pairs`). The
control measures edges made by chance, sparsity, depth and aggregation; it does not see indirect edges
(DPI errors), which need a planted benchmark (``bench/aracne.py``).

Outputs: ``networks.tsv.gz`` (decoupler-style: ``cell_type, source, target, weight, mi, pvalue, count``;
``source`` the regulator, ``weight`` the Spearman correlation over the type's samples, i.e. the signed
mode of regulation; a type's rows pass to ``decoupler`` as ``net`` unchanged), ``control.tsv`` (one row per
type and a total) and ``report.json``. Null-model cache: ``--cache-dir``, default
``<out-dir>/../.cache/aracne_null``.

Entry point: :func:`networks_per_cell_type` runs all of the above for every seen cell type of an AnnData
with the settings of one :class:`GrnParameters`, and returns the three outputs (:class:`GrnResult`);
:func:`read_adata` and :func:`read_regulators` read the inputs and :func:`write_networks` writes
``networks.tsv.gz``. The command line (``cellgraph grn``) is :mod:`cellgraph.cli.grn`.
"""

from __future__ import annotations

import gzip
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from . import aracne as engine
from .count_dpi import count_dpi
from ..errors import InputError
from ..io import atomic_path, require_file

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULTS",
    "GrnParameters",
    "GrnResult",
    "networks_per_cell_type",
    "cell_type_network",
    "read_adata",
    "read_regulators",
    "write_networks",
    "type_inputs",
    "detected_genes",
    "depth_blocks",
    "permute_within_blocks",
    "disjoint_metacells",
    "knn_metacells",
    "sample_matrix",
    "type_network",
    "permutation_control",
    "control_summary",
    "n_pairs",
    "recurrence_consolidation",
    "leiden_subclusters",
]

METACELLS = ("none", "disjoint", "knn")
#: Cells per depth block within which the permutation control permutes a gene: fine enough that a gene's
#: dependence on depth survives the permutation (finer than the engine's strata, so the control can show
#: what the strata miss).
CONTROL_BLOCK_CELLS = 5

#: Stage defaults: the engine's (:data:`cellgraph.grn.aracne.DEFAULTS`) and the stage's own; config/config.yaml
#: section ``grn`` repeats them (a test checks).
DEFAULTS = dict(
    engine.DEFAULTS,
    min_detected_fraction=0.1,
    depth_stratum_cells=25,
    metacells="none",
    metacell_umis=10_000,
    metacell_k=10,
    subclusters=False,
    subcluster_resolution=1.0,
    subcluster_min_cells=100,
    control_permutations=5,
    count_dpi=True,
    count_dpi_margin=0.1,
    threads=2,
)
ENGINE_KEYS = tuple(engine.DEFAULTS)
NETWORK_COLUMNS = ["cell_type", "source", "target", "weight", "mi", "pvalue", "count"]
CONTROL_COLUMNS = ["cell_type", "cells", "samples", "genes", "regulators", "real_edges", "permutations",
                   "control_edges_mean", "control_edges_lo", "control_edges_hi", "fdr", "fdr_lo", "fdr_hi",
                   "null_valid"]


@dataclass(frozen=True)
class GrnParameters:
    """Settings of one run of the grn stage over all seen cell types (:func:`networks_per_cell_type`).

    The defaults are :data:`DEFAULTS` (config/config.yaml section ``grn`` repeats them); the command line
    checks the ranges (:mod:`cellgraph.cli.grn`), this class does not.

    Fields
    ------
    n_bootstraps : int, default 50
        ARACNe bootstraps per network (engine, :data:`cellgraph.grn.aracne.DEFAULTS`).
    bootstrap : {"subsample", "none"}, default "subsample"
        Samples of a bootstrap: 1 - 1/e of them drawn without replacement (ARACNe3), or all.
    mi_method : {"fdr", "pvalue", "fwer"}, default "fdr"
        MI threshold per bootstrap: Benjamini-Hochberg over null p-values (ARACNe3 ``--alpha``), a fixed
        null p-value (ARACNe-AP) or Bonferroni.
    mi_alpha : float, default 0.05
        Level of ``mi_method`` "fdr" / "fwer", in (0, 1).
    mi_pvalue : float, default 1e-4
        Null p-value of ``mi_method`` "pvalue".
    dpi_tolerance : float, default 0.0
        Data processing inequality tolerance, in [0, 1).
    consolidation : {"poisson", "binomial"}, default "poisson"
        Count test of the recurrence cut (ARACNe-AP lambda or ARACNe3 theta).
    correction : str, default "bonferroni"
        Multiple-testing adjustment of the count test (:data:`cellgraph.grn.aracne.CORRECTIONS`).
    consolidation_alpha : float, default 0.05
        Recurrence cut: the smallest count with adjusted p below this; also the level of the sub-cluster
        consolidation (:func:`recurrence_consolidation`).
    min_detected_fraction : float, default 0.1
        A gene is kept for a type if detected (count > 0) in at least this fraction of its train cells.
    depth_stratum_cells : int, default 25
        Samples per depth block of the depth-conditional ranks (samples, not UMIs); 0 = off.
    metacells : {"none", "disjoint", "knn"}, default "none"
        ARACNe samples: single cells, disjoint metacells or overlapping kNN metacells (:func:`sample_matrix`).
    metacell_umis : int, default 10000
        UMIs per disjoint metacell.
    metacell_k : int, default 10
        Cells per kNN metacell.
    subclusters : bool, default False
        ARACNe within Leiden sub-clusters of each type, consolidated (GREmLN appendix A.1).
    subcluster_resolution : float, default 1.0
        Leiden resolution of the sub-clusters.
    subcluster_min_cells : int, default 100
        Sub-clusters with fewer cells are skipped and counted.
    control_permutations : int, default 5
        Runs of the permutation control per type; 0 = off.
    count_dpi : bool, default True
        Remove edges that a triangle through a regulator (both other sides significant) explains on the
        latent correlations of the counts (:func:`cellgraph.grn.count_dpi.count_dpi`), after ARACNe.
    count_dpi_margin : float, default 0.1
        Margin of that rule, in [0, 1): an edge is removed when both other sides of a triangle exceed
        ``(1 - margin)`` times its ``|rho|``; 0 = the plain DPI.
    threads : int, default 2
        numba threads (results do not depend on it).
    seed : int, default 0
        Seeds the per-type seeds (bootstraps, metacells, sub-clusters), the control's permutations and the
        null model.
    cache_dir : path or None, default None
        Null-model cache folder; None = no cache (the command line's default is
        ``<out-dir>/../.cache/aracne_null``).
    checkpoint_dir : path or None, default None
        Per-bootstrap networks of the real runs, one subfolder ``typeNNN`` per cell type, so an
        interrupted run resumes; None = none.
    """

    n_bootstraps: int = DEFAULTS["n_bootstraps"]
    bootstrap: str = DEFAULTS["bootstrap"]
    mi_method: str = DEFAULTS["mi_method"]
    mi_alpha: float = DEFAULTS["mi_alpha"]
    mi_pvalue: float = DEFAULTS["mi_pvalue"]
    dpi_tolerance: float = DEFAULTS["dpi_tolerance"]
    consolidation: str = DEFAULTS["consolidation"]
    correction: str = DEFAULTS["correction"]
    consolidation_alpha: float = DEFAULTS["consolidation_alpha"]
    min_detected_fraction: float = DEFAULTS["min_detected_fraction"]
    depth_stratum_cells: int = DEFAULTS["depth_stratum_cells"]
    metacells: str = DEFAULTS["metacells"]
    metacell_umis: int = DEFAULTS["metacell_umis"]
    metacell_k: int = DEFAULTS["metacell_k"]
    subclusters: bool = DEFAULTS["subclusters"]
    subcluster_resolution: float = DEFAULTS["subcluster_resolution"]
    subcluster_min_cells: int = DEFAULTS["subcluster_min_cells"]
    control_permutations: int = DEFAULTS["control_permutations"]
    count_dpi: bool = DEFAULTS["count_dpi"]
    count_dpi_margin: float = DEFAULTS["count_dpi_margin"]
    threads: int = DEFAULTS["threads"]
    seed: int = 0
    cache_dir: Path | None = None
    checkpoint_dir: Path | None = None

    def settings(self) -> dict:
        """The settings dict of :func:`type_network`, :func:`permutation_control` and
        :func:`leiden_subclusters` before the per-type keys are set: the :data:`DEFAULTS` keys,
        ``null_seed`` (= ``seed``, the null model's seed for every type) and ``cache_dir``."""
        return {k: getattr(self, k) for k in DEFAULTS} | dict(null_seed=self.seed, cache_dir=self.cache_dir)


@dataclass(frozen=True, eq=False)
class GrnResult:
    """Outputs of :func:`networks_per_cell_type`.

    Fields
    ------
    networks : DataFrame, columns :data:`NETWORK_COLUMNS`
        One row per edge and cell type (``networks.tsv.gz``, :func:`write_networks`).
    control : DataFrame, columns :data:`CONTROL_COLUMNS`
        Real and false (permutation control) edges per type and a ``total`` row (``control.tsv``); empty
        (no rows) when no type ran.
    report : dict
        ``report.json``: inputs, parameters, regulators, genes, one entry per cell type, totals.
    """

    networks: pd.DataFrame
    control: pd.DataFrame
    report: dict


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def read_regulators(path) -> list[str]:
    """Regulator symbols of ``regulators.txt`` (UTF-8, one per line; a leading byte-order mark, blank lines and
    ``#`` comments ignored).

    Parameters
    ----------
    path : path
        The regulator list (ARACNe-AP ``--tfs`` format).

    Returns
    -------
    list[str], the distinct symbols, sorted.

    Raises
    ------
    InputError
        If the file is missing, unreadable, empty, or a line holds more than one field.
    """
    path = require_file(path, "regulators")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a leading byte-order mark is not a name
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot be read as text ({err})") from err
    regs = []
    for i, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if len(s.split()) != 1:
            raise InputError(f"{path}: line {i}: expected one regulator symbol, got {s!r}")
        regs.append(s)
    if not regs:
        raise InputError(f"{path}: no regulator symbols")
    return sorted(set(regs))


def read_adata(path: str | os.PathLike):
    """Read the expression stage's h5ad and check what the grn stage needs of it.

    Parameters
    ----------
    path : h5ad file with raw UMI counts in ``layers["counts"]``, ``obs["split"]`` (train/val/test/heldout),
        the label column named by ``uns["cellgraph"]["label_key"]`` and ``var["highly_variable"]``.

    Returns
    -------
    (adata, label_key): the AnnData [cells x genes] and the name of its cell-type column in ``obs``.

    Raises
    ------
    InputError
        If the file is missing or not an h5ad, lacks one of the parts above, has repeated var_names, or
        ``obs["split"]`` holds other values.
    """
    import anndata as ad

    path = require_file(path, "adata")
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - any parse failure is the user's file
        raise InputError(f"{path}: cannot be read as h5ad ({err})") from err
    label_key = (adata.uns.get("cellgraph") or {}).get("label_key")
    for ok, what in (("split" in adata.obs, "obs has no 'split' column (expected train/val/test/heldout from the expression stage)"),
                     (label_key is not None, "uns['cellgraph']['label_key'] is missing"),
                     ("highly_variable" in adata.var, "var has no 'highly_variable' column"),
                     ("counts" in adata.layers, "has no layers['counts'] (raw UMI counts, as the expression stage writes)"),
                     (adata.var_names.is_unique, "var_names are not unique")):
        if not ok:
            raise InputError(f"{path}: {what}")
    x = adata.layers["counts"]
    values = x.data if sparse.issparse(x) else np.asarray(x)
    if values.size and not (np.all(np.isfinite(values)) and values.min() >= 0 and np.all(values == np.round(values))):
        raise InputError(f"{path}: layers['counts'] holds values that are not whole numbers >= 0 (expected raw UMI "
                         "counts: ARACNe's samples and the count DPI's Poisson model are built from them)")
    label_key = str(label_key)
    if label_key not in adata.obs:
        raise InputError(f"{path}: obs has no label column {label_key!r} (uns['cellgraph']['label_key'])")
    bad = sorted(set(adata.obs["split"].astype(str)) - {"train", "val", "test", "heldout"})
    if bad:
        raise InputError(f"{path}: obs['split'] has values {bad[:5]}; expected train/val/test/heldout")
    return adata, label_key


def _dense(x) -> np.ndarray:
    import scipy.sparse as sp

    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def type_inputs(adata, cells: np.ndarray, gene_pos: np.ndarray, is_reg: np.ndarray, min_fraction: float):
    """Raw counts of one cell type's candidate genes and the detection floor (step 1 of the module docstring).

    Parameters
    ----------
    adata : AnnData with raw UMI counts in ``layers["counts"]``.
    cells : int array [C], obs positions of the type's cells; gene_pos : int array [G], var positions of the
        candidate genes (HVGs and regulators); is_reg : bool array [G], which candidates are regulators.
    min_fraction : float, detection floor (fraction of the cells with count > 0).

    Returns
    -------
    (counts float [C x G'] of the genes that pass, depth float [C] = total UMIs over all genes, genes [G'],
    regulators (list, sorted) among them, ok bool [G] = which candidates pass).
    """
    x = adata.layers["counts"][cells]
    depth = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    counts = _dense(x[:, gene_pos])
    ok = detected_genes(counts, min_fraction)
    names = np.asarray(adata.var_names, dtype=str)[gene_pos]
    return counts[:, ok], depth, names[ok], sorted(str(g) for g in names[ok & is_reg]), ok


def detected_genes(counts: np.ndarray, min_fraction: float) -> np.ndarray:
    """Bool mask [G] of genes detected (count > 0) in at least ``min_fraction`` of the cells of ``counts``
    [cells x G].

    Parameters
    ----------
    counts : float array [cells, G]
        Raw UMI counts.
    min_fraction : float
        Detection floor, fraction 0-1 of the cells.

    Returns
    -------
    bool array [G].
    """
    return (counts > 0).mean(axis=0) >= min_fraction


# --------------------------------------------------------------------------------------------------
# Depth blocks, permutations, metacells
# --------------------------------------------------------------------------------------------------


def depth_blocks(depth: np.ndarray, size: int) -> np.ndarray | None:
    """Block label [n] of each sample: samples sorted by depth (ties by position) cut into blocks of
    ``size``; a last block smaller than ``size / 2`` joins the one before.

    Parameters
    ----------
    depth : float array [n]
        Depth of each sample (total UMIs).
    size : int
        Samples per block; <= 0 turns blocks off.

    Returns
    -------
    int64 array [n] of block labels 0..K-1 (block 0 the shallowest), or ``None`` when ``size`` <= 0 or fewer
    than two blocks fit (``n < 2 size``).
    """
    n = depth.size
    if size <= 0 or n < 2 * size:
        return None
    order = np.argsort(depth, kind="stable")
    labels = np.empty(n, dtype=np.int64)
    labels[order] = np.arange(n) // size
    last = labels.max()
    if (labels == last).sum() < size / 2:
        labels[labels == last] = last - 1
    return labels


def permute_within_blocks(counts: np.ndarray, blocks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``counts`` [cells x G] with each gene (column) permuted independently across the cells of each block.

    Parameters
    ----------
    counts : array [cells, G]
        Counts (left unchanged).
    blocks : int array [cells]
        Block label of each cell (:func:`depth_blocks`).
    rng : numpy.random.Generator
        Source of the permutations.

    Returns
    -------
    A permuted copy of ``counts``, same shape and dtype; each gene keeps its values within each block.
    """
    out = counts.copy()
    for k in np.unique(blocks):
        idx = np.flatnonzero(blocks == k)
        out[idx] = rng.permuted(counts[idx], axis=0)
    return out


def _log_cpm(counts: np.ndarray, depth: np.ndarray) -> np.ndarray:
    return np.log1p(counts / np.maximum(depth, 1.0)[:, None] * 1e6)


def _embedding(counts: np.ndarray, depth: np.ndarray, seed: int) -> np.ndarray:
    """PCA (up to 30 components) of the log-CPM of ``counts`` [cells x G]: [cells x k]."""
    from sklearn.decomposition import PCA

    x = _log_cpm(counts, depth)
    k = int(min(30, x.shape[0] - 1, x.shape[1]))
    return PCA(n_components=k, random_state=seed).fit_transform(x) if k >= 2 else x


def disjoint_metacells(emb: np.ndarray, depth: np.ndarray, target_umis: float, seed: int) -> list[np.ndarray]:
    """Disjoint metacells of about ``target_umis`` UMIs: every cell in exactly one.

    In a seeded random order, each free cell takes its nearest free neighbours (Euclidean on ``emb``
    [cells x k]) until the summed ``depth`` reaches ``target_umis``; cells left over when no full metacell
    can be formed around them join the metacell with the nearest centroid.

    Parameters
    ----------
    emb : float array [cells, k]
        Embedding of the cells (PCA of the log-CPM).
    depth : float array [cells]
        Total UMIs of each cell.
    target_umis : float
        UMIs per metacell.
    seed : int
        Seed of the cell order.

    Returns
    -------
    list of int arrays (cell positions, sorted), one per metacell; a single metacell of all cells if no
    full one can be formed.

    Raises
    ------
    InputError
        If the cells hold fewer than ``target_umis`` UMIs in total.
    """
    from sklearn.neighbors import NearestNeighbors

    n = depth.size
    if depth.sum() < target_umis:
        raise InputError(f"{n} cells hold {depth.sum():.0f} UMIs, fewer than one metacell of {target_umis:.0f}")
    per = max(1, int(np.ceil(target_umis / max(np.median(depth), 1.0))))
    _, nbrs = NearestNeighbors(n_neighbors=min(n, max(64, 8 * per))).fit(emb).kneighbors(emb)
    free = np.ones(n, dtype=bool)
    groups = []
    for c in np.random.default_rng([seed, 0x4D43]).permutation(n):
        if not free[c]:
            continue
        cand = nbrs[c][free[nbrs[c]]]
        reach = np.flatnonzero(np.cumsum(depth[cand]) >= target_umis)
        if reach.size:
            g = cand[: reach[0] + 1]
            free[g] = False
            groups.append(g)
    if not groups:
        return [np.arange(n)]
    cent = np.stack([emb[g].mean(axis=0) for g in groups])
    extra = [[] for _ in groups]
    for c in np.flatnonzero(free):
        extra[int(np.argmin(((cent - emb[c]) ** 2).sum(axis=1)))].append(c)
    return [np.sort(np.concatenate([g, np.asarray(e, dtype=g.dtype)])) for g, e in zip(groups, extra)]


def knn_metacells(emb: np.ndarray, k: int) -> list[np.ndarray]:
    """Overlapping kNN metacells: each cell with its ``k - 1`` nearest neighbours (one per cell).

    Parameters
    ----------
    emb : float array [cells, d]
        Embedding of the cells (PCA of the log-CPM); Euclidean neighbours.
    k : int
        Cells per metacell.

    Returns
    -------
    list of int arrays [k] (cell positions), one per cell.

    Raises
    ------
    InputError
        If ``k`` exceeds the number of cells.
    """
    from sklearn.neighbors import NearestNeighbors

    if k > emb.shape[0]:
        raise InputError(f"metacell_k {k} exceeds the {emb.shape[0]} cells")
    _, idx = NearestNeighbors(n_neighbors=k).fit(emb).kneighbors(emb)
    return list(idx)


def sample_matrix(counts: np.ndarray, depth: np.ndarray, metacells: str, seed: int, metacell_umis: float = 10_000,
                  metacell_k: int = 10):
    """The ARACNe samples of one group of cells.

    Parameters
    ----------
    counts : float array [cells x G], raw UMI counts of the selected genes.
    depth : float array [cells], total UMIs of each cell over all genes.
    metacells : {"none", "disjoint", "knn"}
    seed : int, metacell_umis : float, metacell_k : int

    Returns
    -------
    (counts float [samples x G] (a metacell's summed raw counts), sample depth [samples], info dict:
    ``samples``, ``metacells``, ``cells_per_sample`` (median), ``max_reuse`` (most samples one cell is in),
    ``null_valid``, ``reason``). ARACNe's expression is ``log1p(CPM)`` of these counts.
    """
    if metacells == "none":
        groups = None
    else:
        emb = _embedding(counts, depth, seed)
        groups = (disjoint_metacells(emb, depth, metacell_umis, seed) if metacells == "disjoint"
                  else knn_metacells(emb, metacell_k))
    if groups is None:
        info = dict(samples=int(depth.size), metacells=metacells, cells_per_sample=1, max_reuse=1, null_valid=True,
                    reason="single cells: independent samples")
        return counts, depth, info
    summed = np.stack([counts[g].sum(axis=0) for g in groups])
    sdepth = np.array([depth[g].sum() for g in groups])
    reuse = int(np.bincount(np.concatenate(groups), minlength=depth.size).max())
    valid = reuse == 1
    info = dict(samples=len(groups), metacells=metacells, cells_per_sample=float(np.median([len(g) for g in groups])),
                max_reuse=reuse, null_valid=valid,
                reason="disjoint metacells: every cell in one sample" if valid else
                f"overlapping metacells: a cell is in up to {reuse} samples, so samples are not independent and the "
                "MI null model does not hold (see the permutation control)")
    return summed, sdepth, info


# --------------------------------------------------------------------------------------------------
# Networks of one cell type
# --------------------------------------------------------------------------------------------------


def bootstrap_progress(n_bootstraps: int, label: str = "", every_s: float = 30.0):
    """An ``on_bootstrap(b)`` callback for :func:`cellgraph.grn.aracne.aracne` that logs progress at INFO.

    Logs the first and the last bootstrap and, in between, at most one line per ``every_s`` seconds (wall
    time): ``ARACNe <label>: bootstrap b/B done (t s)``, so a long (paper-scale) job shows it is alive.

    Parameters
    ----------
    n_bootstraps : int
        B, the bootstraps of the run.
    label : str
        Name of the run in the log lines.
    every_s : float
        Least seconds between two log lines.

    Returns
    -------
    callable ``on_bootstrap(b)`` taking the 0-based bootstrap index, returning None.
    """
    t0 = time.perf_counter()
    last = [-np.inf]

    def on_bootstrap(b: int) -> None:
        """Log bootstrap ``b`` (0-based) if it is the first, the last or ``every_s`` after the last line."""
        now = time.perf_counter()
        if b == 0 or b + 1 == n_bootstraps or now - last[0] >= every_s:
            last[0] = now
            log.info("ARACNe %s: bootstrap %d/%d done (%.0f s)", label, b + 1, n_bootstraps, now - t0)

    return on_bootstrap


def _part_network(counts, depth, genes, regs, st, fixed=None):
    """Samples + ARACNe of one group of cells: (edges DataFrame, cut dict, info dict)."""
    scounts, sdepth, info = sample_matrix(counts, depth, st["metacells"], st["seed"], st["metacell_umis"],
                                          st["metacell_k"])
    expr = _log_cpm(scounts, sdepth).T.copy()
    strata = depth_blocks(sdepth, st["depth_stratum_cells"])
    info["depth_strata"] = 0 if strata is None else int(strata.max() + 1)
    kw = {k: st[k] for k in ENGINE_KEYS} | dict(seed=st["seed"], threads=st["threads"], cache_dir=st["cache_dir"],
                                              null_seed=st["null_seed"], strata=strata)
    if fixed is not None:
        kw.update(mi_thresholds=fixed["mi_thresholds"], min_count=fixed["min_count"])
    elif st.get("checkpoint_dir") is not None:
        kw["checkpoint_dir"] = st["checkpoint_dir"]
    df = engine.aracne(expr, genes, regs, on_bootstrap=bootstrap_progress(st["n_bootstraps"], st.get("label", "")),
                       **kw)
    a = df.attrs
    cut = dict(mi_thresholds=a["mi_thresholds_per_bootstrap"], min_count=a["min_count"])
    info.update(samples_per_bootstrap=a["n_per_bootstrap"], pairs_tested=a["n_tested"],
                edges_above_threshold_per_bootstrap=a["edges_above_threshold"],
                edges_after_dpi_per_bootstrap=a["edges_per_bootstrap"], mi_thresholds_per_bootstrap=a["mi_thresholds_per_bootstrap"],
                count_rate=a["count_rate"], min_count=a["min_count"], consolidation_rule=a["consolidation_rule"],
                constant_genes=a["constant_genes"], bootstraps_resumed=a["bootstraps_resumed"], edges=n_pairs(df))
    if st["count_dpi"]:
        keep = count_dpi(df, scounts, sdepth / np.median(sdepth), genes, regs, st["count_dpi_margin"])
        info.update(edges_before_count_dpi=info["edges"], edges=n_pairs(df[keep]))
        df = df[keep].reset_index(drop=True)
    return df, cut, info


def n_pairs(df: pd.DataFrame) -> int:
    """Distinct unordered (regulator, target) pairs of an edge table: a regulator pair listed in both
    directions counts once. The unit of the edge counts in ``control.tsv`` and the report.

    Parameters
    ----------
    df : DataFrame
        Edge table with columns ``regulator`` and ``target``.

    Returns
    -------
    int, the number of distinct unordered pairs.
    """
    return len({frozenset(e) for e in zip(df["regulator"], df["target"])})


def recurrence_consolidation(networks: list[pd.DataFrame], n_possible: list[int], alpha: float,
                             min_parts: int | None = None) -> tuple[pd.DataFrame, int, float]:
    """Consolidate the networks of S sub-clusters by binomial recurrence (GREmLN appendix A.1).

    An edge ``regulator -> target`` found in ``k`` of the ``S`` networks gets ``P(X >= k)``,
    ``X ~ Binomial(S, p)``, ``p`` the mean over sub-clusters of the edge density ``|E_s| / n_possible_s``
    (``|E_s|`` undirected pairs, ``n_possible_s`` the pairs tested there);
    Benjamini-Hochberg over ``max(n_possible)`` edges; kept iff ``k >= min_parts``, by default the smallest
    ``k`` whose adjusted p is at most ``alpha`` (``S + 1`` if none).

    Parameters
    ----------
    networks : list of S DataFrames
        Sub-cluster networks (engine columns ``regulator, target, mi, count, scc`` used).
    n_possible : list of S int
        Pairs tested in each sub-cluster.
    alpha : float
        Benjamini-Hochberg level, in (0, 1].
    min_parts : int, optional
        Use this cut (a control run: the real run's ``min_parts``) instead of deriving it.

    Returns
    -------
    (DataFrame ``regulator, target, mi, count, scc, n_parts, pvalue`` (``mi``/``scc`` averaged over the
    sub-clusters with the edge, ``count`` summed), min_parts, p).
    """
    from scipy.stats import binom

    s = len(networks)
    pairs = [n_pairs(n) for n in networks]
    p = float(np.mean([k / max(m, 1) for k, m in zip(pairs, n_possible)])) if s else 0.0
    cols = ["regulator", "target", "mi", "count", "scc"]
    allr = pd.concat([n[cols] for n in networks], ignore_index=True) if s else pd.DataFrame(columns=cols)
    g = allr.groupby(["regulator", "target"], sort=True).agg(mi=("mi", "mean"), count=("count", "sum"), scc=("scc", "mean"),
                                                             n_parts=("mi", "size")).reset_index()
    pv = binom.sf(g["n_parts"].to_numpy() - 1, s, max(p, 1e-300)) if len(g) else np.zeros(0)
    q = engine.adjust_pvalues(pv, max(max(n_possible, default=1), len(g)), "bh")
    if min_parts is None:
        passing = g["n_parts"].to_numpy()[q <= alpha]
        min_parts = int(passing.min()) if passing.size else s + 1
    g["pvalue"] = q
    return g[g["n_parts"] >= min_parts].reset_index(drop=True), int(min_parts), p


def leiden_subclusters(counts: np.ndarray, depth: np.ndarray, st: dict) -> tuple[list[np.ndarray], list[int]]:
    """Leiden sub-clusters of one type's cells (scanpy ``neighbors`` + ``leiden`` on the PCA of the log-CPM of
    ``counts`` [cells x G], resolution ``st["subcluster_resolution"]``, seed ``st["seed"]``).

    Parameters
    ----------
    counts : float array [cells, G]
        Raw UMI counts of the type's selected genes.
    depth : float array [cells]
        Total UMIs of each cell over all genes.
    st : dict
        Stage settings; ``seed``, ``subcluster_resolution`` and ``subcluster_min_cells`` are read.

    Returns
    -------
    (position arrays of the sub-clusters with >= ``st["subcluster_min_cells"]`` cells, sizes of the others).
    """
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(_embedding(counts, depth, st["seed"]).astype(np.float32))
    sc.pp.neighbors(a, n_neighbors=min(15, a.n_obs - 1), use_rep="X", random_state=st["seed"])
    sc.tl.leiden(a, resolution=st["subcluster_resolution"], flavor="igraph", n_iterations=2, random_state=st["seed"])
    labels = a.obs["leiden"].astype(int).to_numpy()
    parts = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    keep = [p for p in parts if p.size >= st["subcluster_min_cells"]]
    return keep, [int(p.size) for p in parts if p.size < st["subcluster_min_cells"]]


def type_network(counts, depth, genes, regs, st, parts=None, fixed=None):
    """Network of one cell type from its cells' raw counts.

    Parameters
    ----------
    counts : float array [cells x G], raw UMI counts of the type's selected genes; depth : float [cells],
        total UMIs per cell; genes : [G] names; regs : regulator names among ``genes``.
    st : dict, the stage settings (:data:`DEFAULTS` keys plus ``seed``, ``null_seed``, ``cache_dir``; optional
        ``checkpoint_dir`` and ``label``): :meth:`GrnParameters.settings` with the type's ``seed``.
    parts : list of position arrays, optional
        Sub-clusters (from :func:`leiden_subclusters`); ``None`` = all cells as one group.
    fixed : dict, optional
        The cut of a real run (its second return value): use its thresholds and recurrence cuts.

    Returns
    -------
    (edges DataFrame ``regulator, target, mi, pvalue, count, scc``, cut dict, info dict).
    """
    groups = [np.arange(depth.size)] if parts is None else parts
    nets, cuts, infos = [], [], []
    for i, g in enumerate(groups):
        sub = dict(st, checkpoint_dir=None if st.get("checkpoint_dir") is None else Path(st["checkpoint_dir"]) / f"part{i:02d}",
                   label=st.get("label", "") if parts is None else f"{st.get('label', '')} part {i + 1}/{len(groups)}")
        df, cut, info = _part_network(counts[g], depth[g], genes, regs, sub, None if fixed is None else fixed["parts"][i])
        nets.append(df)
        cuts.append(cut)
        infos.append(info)
    if parts is None:
        return nets[0], dict(parts=cuts), infos[0]
    possible = [i["pairs_tested"] for i in infos]
    df, min_parts, p = recurrence_consolidation(nets, possible, st["consolidation_alpha"],
                                                None if fixed is None else fixed["min_parts"])
    info = dict(subclusters=[dict(i, cells=int(g.size)) for i, g in zip(infos, groups)], min_parts=min_parts,
                mean_density=p, edges=n_pairs(df), null_valid=all(i["null_valid"] for i in infos),
                samples=int(sum(i["samples"] for i in infos)))
    return df, dict(parts=cuts, min_parts=min_parts), info


def permutation_control(counts, depth, genes, regs, st, cut, parts=None, rng_key=(0,)) -> list[int]:
    """False edges of ``st["control_permutations"]`` runs on permuted cells (module docstring).

    Each gene's counts are permuted across the cells of each depth block of :data:`CONTROL_BLOCK_CELLS`
    (within each sub-cluster when ``parts`` is given), then :func:`type_network` runs with the real run's
    ``cut``.

    Parameters
    ----------
    counts, depth, genes, regs, st
        As :func:`type_network` (``st["control_permutations"]`` runs; run ``r`` uses seed
        ``st["seed"] + 1000 (r + 1)``).
    cut : dict
        The real run's cut (second return value of :func:`type_network`).
    parts : list of position arrays, optional
        The real run's sub-clusters.
    rng_key : tuple of int
        Seeds the permutations (with the run index).

    Returns
    -------
    list[int], the distinct edges (:func:`n_pairs`) of each run.
    """
    out = []
    groups = [np.arange(depth.size)] if parts is None else parts
    for r in range(st["control_permutations"]):
        rng = np.random.default_rng([*rng_key, r, 0x5045524D])
        perm = counts.copy()
        for g in groups:
            blocks = depth_blocks(depth[g], CONTROL_BLOCK_CELLS)
            perm[g] = permute_within_blocks(counts[g], np.zeros(g.size, int) if blocks is None else blocks, rng)
        df, _, _ = type_network(perm, depth, genes, regs, dict(st, seed=st["seed"] + 1000 * (r + 1)), parts, cut)
        out.append(n_pairs(df))
    return out


def control_summary(control_edges: list[int], real_edges: int) -> dict:
    """Mean false edges over the control runs with an exact 95% Poisson interval of the mean (Garwood), and
    the implied FDR = mean / real edges with the same interval scaled (capped at 1; None without real
    edges).

    Parameters
    ----------
    control_edges : list[int]
        False edges of each control run.
    real_edges : int
        Edges of the real run.

    Returns
    -------
    dict: ``permutations`` (runs) and, when there was a run, ``edges`` (per run), ``mean``, ``lo``, ``hi``
    (edges), ``fdr``, ``fdr_lo``, ``fdr_hi`` (fractions 0-1 or None).
    """
    from scipy.stats import chi2

    r = len(control_edges)
    if r == 0:
        return dict(permutations=0)
    tot = int(sum(control_edges))
    lo = 0.0 if tot == 0 else chi2.ppf(0.025, 2 * tot) / 2 / r
    hi = chi2.ppf(0.975, 2 * tot + 2) / 2 / r
    mean = tot / r
    fdr = (lambda v: float(min(1.0, v / real_edges)) if real_edges else None)
    return dict(permutations=r, edges=list(map(int, control_edges)), mean=mean, lo=float(lo), hi=float(hi),
                fdr=fdr(mean), fdr_lo=fdr(lo), fdr_hi=fdr(hi))


# --------------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------------


def _names(xs, limit=50):
    xs = sorted(xs)
    return xs if len(xs) <= limit else xs[:limit] + [f"... ({len(xs) - limit} more)"]


def _cell_types(adata, label_key, path):
    split = adata.obs["split"].astype(str).to_numpy()
    labels = adata.obs[label_key].astype(str).to_numpy()
    heldout = {str(t) for t in np.atleast_1d((adata.uns.get("cellgraph") or {}).get("heldout_types", []))}
    heldout |= set(labels[split == "heldout"])
    types = sorted(set(labels[split == "train"]) - heldout)
    if not types:
        raise InputError(f"{path}: no cell type has train cells (obs['split'] == 'train') outside the held-out types")
    return types, labels, split, sorted(heldout)


def _genes_entry(var_names, gene_pos, is_reg, cells, depth, ok, regs) -> dict:
    """Report entry of one type before ARACNe: cells, genes kept and skipped, depth quantiles."""
    return dict(train_cells=int(cells.size), genes=int(ok.sum()), regulators=len(regs),
                depth_umis=dict(zip(("p10", "median", "p90"), np.quantile(depth, [0.1, 0.5, 0.9]).round(1).tolist())),
                skipped_not_detected=dict(
                    genes=dict(count=int((~ok & ~is_reg).sum()), names=_names(var_names[gene_pos[~ok & ~is_reg]].tolist())),
                    regulators=dict(count=int((~ok & is_reg).sum()), names=_names(var_names[gene_pos[~ok & is_reg]].tolist()))))


def _control_row(ct, cells, genes, regs, df, info, summary) -> dict:
    """``control.tsv`` row of one type (:data:`CONTROL_COLUMNS`)."""
    return dict(cell_type=ct, cells=int(cells.size), samples=info["samples"], genes=len(genes), regulators=len(regs),
                real_edges=n_pairs(df), permutations=summary["permutations"],
                control_edges_mean=summary.get("mean"), control_edges_lo=summary.get("lo"),
                control_edges_hi=summary.get("hi"), fdr=summary.get("fdr"), fdr_lo=summary.get("fdr_lo"),
                fdr_hi=summary.get("fdr_hi"), null_valid=info["null_valid"])


def cell_type_network(adata, cells: np.ndarray, gene_pos: np.ndarray, is_reg: np.ndarray, cell_type: str,
                      type_index: int, params: GrnParameters, source: str | os.PathLike = "adata"):
    """Network and permutation control of one cell type (module docstring, steps 1-4 and the control).

    Keeps the candidate genes detected in ``params.min_detected_fraction`` of the type's cells
    (:func:`type_inputs`), splits the cells into Leiden sub-clusters if ``params.subclusters``
    (:func:`leiden_subclusters`), runs ARACNe (:func:`type_network`; with sub-clusters, consolidated by
    binomial recurrence, GREmLN appendix A.1) and the permutation control with the real run's cut
    (:func:`permutation_control`, :func:`control_summary`). The type's seed is drawn from
    ``SeedSequence([params.seed, type_index])``; its checkpoints go to ``params.checkpoint_dir /
    "typeNNN"`` (NNN = ``type_index``).

    Parameters
    ----------
    adata : AnnData [cells x genes] with raw UMI counts in ``layers["counts"]``.
    cells : int array [C], obs positions of the type's train cells.
    gene_pos : int array [G], var positions of the candidate genes (HVGs and regulators).
    is_reg : bool array [G], which candidates are regulators.
    cell_type : the type's label; type_index : its position among the seen types (seeds the type).
    params : the stage settings.
    source : the h5ad's path, named in error messages.

    Returns
    -------
    (edges, entry, row): the engine's edge DataFrame (``regulator, target, mi, pvalue, count, scc``) or None
    when the type is skipped (no detected regulator, or no large enough sub-cluster); the type's
    ``report.json`` entry (dict, with ``status``); its ``control.tsv`` row (dict of
    :data:`CONTROL_COLUMNS`) or None when skipped.

    Raises
    ------
    InputError
        ``"<source>: cell type '<t>': ..."`` when the engine rejects the type's samples (for example too
        few UMIs for one metacell).
    """
    var_names = np.asarray(adata.var_names, dtype=str)
    counts, depth, genes, regs, ok = type_inputs(adata, cells, gene_pos, is_reg, params.min_detected_fraction)
    entry = _genes_entry(var_names, gene_pos, is_reg, cells, depth, ok, regs)
    if not regs or ok.sum() < 2:
        entry["status"] = f"skipped: no regulator detected in >= {params.min_detected_fraction:g} of the train cells"
        log.warning("%s: %s", cell_type, entry["status"])
        return None, entry, None
    ti = type_index
    st = dict(params.settings(), seed=int(np.random.SeedSequence([params.seed, ti]).generate_state(1)[0]),
              label=str(cell_type),
              checkpoint_dir=Path(params.checkpoint_dir) / f"type{ti:03d}" if params.checkpoint_dir else None)
    parts = None
    if params.subclusters:
        parts, small = leiden_subclusters(counts, depth, st)
        entry["subclusters_skipped"] = dict(count=len(small), cells=int(sum(small)), sizes=small)
        if not parts:
            entry["status"] = f"skipped: no Leiden sub-cluster has >= {params.subcluster_min_cells} cells"
            log.warning("%s: %s", cell_type, entry["status"])
            return None, entry, None
    try:
        df, cut, info = type_network(counts, depth, genes, regs, st, parts)
        control = permutation_control(counts, depth, genes, regs, st, cut, parts, rng_key=(params.seed, ti))
    except ValueError as err:
        raise InputError(f"{source}: cell type {cell_type!r}: {err}") from err
    summary = control_summary(control, n_pairs(df))
    entry.update(status="ok", seed=st["seed"], **info, permutation_control=summary)
    return df, entry, _control_row(cell_type, cells, genes, regs, df, info, summary)


def _control_table(rows: list[dict], control_edges: list[list[int]]) -> pd.DataFrame:
    """Per-type control rows plus a ``total`` row whose control edges are the per-run sums over types."""
    tab = pd.DataFrame(rows, columns=CONTROL_COLUMNS)
    if tab.empty:
        return tab
    runs = [sum(e) for e in zip(*control_edges)] if control_edges and all(control_edges) else []
    real = int(tab["real_edges"].sum())
    sm = control_summary(runs, real)
    total = dict(cell_type="total", cells=int(tab["cells"].sum()), samples=int(tab["samples"].sum()),
                 genes=None, regulators=None, real_edges=real, permutations=sm["permutations"],
                 control_edges_mean=sm.get("mean"), control_edges_lo=sm.get("lo"), control_edges_hi=sm.get("hi"),
                 fdr=sm.get("fdr"), fdr_lo=sm.get("fdr_lo"), fdr_hi=sm.get("fdr_hi"), null_valid=bool(tab["null_valid"].all()))
    return pd.concat([tab, pd.DataFrame([total], columns=CONTROL_COLUMNS)], ignore_index=True)


def _decoupler_frame(df: pd.DataFrame, ct: str) -> pd.DataFrame:
    """Engine edges as :data:`NETWORK_COLUMNS` rows (``source`` = regulator, ``weight`` = Spearman)."""
    return pd.DataFrame({"cell_type": ct, "source": df["regulator"].astype(str), "target": df["target"].astype(str),
                         "weight": df["scc"].astype(float), "mi": df["mi"].astype(float),
                         "pvalue": df["pvalue"].astype(float), "count": df["count"].astype(np.int64)})


def write_networks(networks: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``networks.tsv.gz``: ``networks`` (:data:`NETWORK_COLUMNS`) as tab-separated text, floats with
    6 significant digits, gzip-compressed without file name and with mtime 0 (same rows, same bytes),
    atomically.

    Parameters
    ----------
    networks : DataFrame
        Edges, columns :data:`NETWORK_COLUMNS` (written as given, without index).
    path : path
        Output file (``networks.tsv.gz``).
    """
    with atomic_path(path) as tmp:
        # no file name and mtime 0 in the gzip header: same seed, same bytes
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(networks.to_csv(sep="\t", index=False, float_format="%.6g").encode())


def _stage_report(adata_path, regulators_path, params: GrnParameters, regulators, present, hvg, gene_pos,
                  heldout) -> dict:
    """``report.json`` before the cell types: inputs, parameters, regulators and genes considered."""
    return dict(
        inputs=dict(adata=str(adata_path), regulators=str(regulators_path)),
        params={k: getattr(params, k) for k in DEFAULTS} | dict(seed=params.seed, cache_dir=str(params.cache_dir)),
        regulators_read=len(regulators), regulators_present=len(present),
        regulators_absent_from_data=dict(count=len(regulators) - len(present), names=_names(set(regulators) - set(present))),
        highly_variable_genes=int(hvg.sum()), genes_considered=int(gene_pos.size), heldout_types=heldout,
        method="per bootstrap: ranks with fresh tie-breaking (depth-conditional), BH over null p-values, DPI; "
               "then the recurrence cut (see each type's consolidation_rule)",
        cell_types={},
    )


def _finish(report: dict, frames: list, rows: list[dict], control_edges: list, t_all: float) -> GrnResult:
    """All types' edges in one frame, the control table with its total, and the report's totals."""
    networks = pd.concat(frames, ignore_index=True)[NETWORK_COLUMNS]
    table = _control_table(rows, control_edges)
    report["cell_types_without_edges"] = sorted(r["cell_type"] for r in rows if r["real_edges"] == 0)
    report["edges_total"] = int(sum(r["real_edges"] for r in rows))  # distinct pairs per type
    report["network_rows"] = int(len(networks))  # regulator pairs in both directions
    report["control_table"] = table.to_dict(orient="records")
    if networks.empty:
        log.warning("grn: no edge survived in any of the %d cell types: at these settings the data support no "
                    "regulator-target dependence beyond what depth and chance give (see control.tsv)", len(rows))
    log.info("grn: %d edges over %d cell types (%.1f s)", report["edges_total"], len(rows), time.perf_counter() - t_all)
    return GrnResult(networks=networks, control=table, report=report)


def networks_per_cell_type(adata, label_key: str, regulators: list[str], params: GrnParameters,
                           adata_path: str | os.PathLike = "adata",
                           regulators_path: str | os.PathLike = "regulators") -> GrnResult:
    """ARACNe networks with their permutation control for every seen cell type (the grn stage).

    The candidate genes are the highly variable genes (``var["highly_variable"]``) and the ``regulators``
    present in ``adata``. The seen types are those with train cells (``obs["split"] == "train"``) that are
    not held out (``uns["cellgraph"]["heldout_types"]`` or a ``heldout`` split); for each, in sorted order,
    :func:`cell_type_network` runs on its train cells (ARACNe3 engine, :func:`cellgraph.grn.aracne.aracne`;
    sub-cluster consolidation of GREmLN appendix A.1 if ``params.subclusters``).

    Parameters
    ----------
    adata : AnnData [cells x genes] as :func:`read_adata` returns it (raw UMI counts in ``layers["counts"]``).
    label_key : the cell-type column of ``obs``.
    regulators : regulator symbols (:func:`read_regulators`).
    params : the stage settings.
    adata_path, regulators_path : where ``adata`` and ``regulators`` were read, for the report and error
        messages.

    Returns
    -------
    GrnResult: ``networks`` (:data:`NETWORK_COLUMNS`), ``control`` (:data:`CONTROL_COLUMNS`, one row per type
    and a total) and ``report`` (the ``report.json`` dict). A run where no edge survives is a result, not an
    error.

    Raises
    ------
    InputError
        If no regulator is a gene of ``adata``, no type has train cells outside the held-out types, no type
        has a regulator detected in ``params.min_detected_fraction`` of its train cells, or the engine
        rejects a type's samples.
    """
    var_names = np.asarray(adata.var_names, dtype=str)
    present = sorted(set(regulators) & set(var_names))
    if not present:
        raise InputError(f"{regulators_path}: none of the {len(regulators)} regulators is a gene of {adata_path} "
                         f"(first: {regulators[:5]}; var_names look like {list(var_names[:3])})")
    hvg = adata.var["highly_variable"].to_numpy().astype(bool)
    gene_pos = np.flatnonzero(hvg | np.isin(var_names, present))
    is_reg = np.isin(var_names[gene_pos], present)
    types, labels, split, heldout = _cell_types(adata, label_key, adata_path)
    report = _stage_report(adata_path, regulators_path, params, regulators, present, hvg, gene_pos, heldout)
    frames, rows, control_edges = [], [], []
    t_all = time.perf_counter()
    for ti, ct in enumerate(types):
        t0 = time.perf_counter()
        cells = np.flatnonzero((labels == ct) & (split == "train"))
        df, entry, row = cell_type_network(adata, cells, gene_pos, is_reg, ct, ti, params, adata_path)
        report["cell_types"][ct] = entry
        if df is None:
            continue
        frames.append(_decoupler_frame(df, ct))
        rows.append(row)
        control_edges.append(entry["permutation_control"].get("edges", []))
        log.info("%s: %d cells, %d genes, %d regulators -> %d edges; control %s (%.1f s)", ct, cells.size, row["genes"],
                 row["regulators"], row["real_edges"], entry["permutation_control"].get("edges"), time.perf_counter() - t0)
    if not frames:
        raise InputError(f"{adata_path}: no cell type had a regulator detected in >= {params.min_detected_fraction:g} "
                         f"of its train cells")
    return _finish(report, frames, rows, control_edges, t_all)
