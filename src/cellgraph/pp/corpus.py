r"""A pretraining corpus from the CELLxGENE Census: query, cap per cell type, shard, assemble on disk.

The GREmLN paper pretrains on CELLxGENE cells and evaluates on separate data sets. This module builds such a
corpus reproducibly: one census release (``census_version``, a dated LTS build), one obs filter, a seeded cap
of cells per type, and a check that no cell of the corpus is also a cell of an evaluation data set.

Census facts relied on (cellxgene-census 1.18 / tiledbsoma 2.3; sources in ``resources/corpus/README.md``):

* ``cellxgene_census.open_soma(census_version=...)`` opens a release; an unknown version raises
  ``ValueError``; it first fetches the release directory over HTTPS (``requests``), so without the internet
  it raises ``requests.exceptions.ConnectionError`` (an ``OSError``).
* ``get_obs(census, organism, value_filter=..., column_names=...)`` reads cell metadata only;
  ``get_anndata(census, organism, obs_coords=<soma_joinids>, X_name="raw", obs_column_names=...)`` reads the
  raw counts of those cells (float32). ``soma_joinid`` is the census' cell id, unique within an organism's
  experiment of one release.
* obs columns used: ``soma_joinid``, ``dataset_id``, ``assay`` (EFO labels, e.g. ``10x 3' v3``),
  ``cell_type`` (Cell Ontology labels), ``tissue_general``, ``disease``, ``is_primary_data`` (bool; False
  marks a cell repeated from another data set). var: ``feature_id`` (Ensembl), ``feature_name`` (symbol).
* The SOMA ``value_filter`` is parsed with Python's ``ast`` (tiledbsoma ``QueryCondition``): ``==``,
  ``!=``, ``in [...]``, ``not in [...]``, ``and``, ``or``; values are Python literals. The same expression is
  valid for :meth:`pandas.DataFrame.query`, so the local stand-in (:func:`query_h5ad`) is filtered by the
  identical string.

Command line (``cellgraph corpus``, :mod:`cellgraph.cli.corpus`; what ``workflow/rules/corpus.smk`` calls)::

    cellgraph corpus --source census --census-version 2025-01-30 --organism "Homo sapiens" \
        --tissues blood --exclude-cell-types erythrocyte --cap-per-type 20000 --shard-cells 50000 \
        --out resources/corpus/corpus.h5ad --manifest resources/corpus/manifest.json
    cellgraph corpus --source h5ad --in census_slice.h5ad ... (same options)
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from ..io import atomic_path, read_h5ad, require_file, write_json

log = logging.getLogger(__name__)

__all__ = ["CorpusFilter", "obs_value_filter", "cap_per_type", "select_cells", "query_census", "query_h5ad",
           "write_shards", "concat_shards", "check_disjoint", "build_corpus", "CENSUS_EXTRA", "ID_PREFIX"]

ID_PREFIX = "census:"  # obs_names of corpus cells: census:<soma_joinid>
CENSUS_EXTRA = "pip install 'cellgraph[census]'"
OBS_COLUMNS = ("soma_joinid", "dataset_id", "assay", "cell_type", "tissue_general", "disease", "is_primary_data")
SOURCES = ("census", "h5ad")


def _literal(value: Any, what: str) -> str:
    """``value`` as a Python string literal (double quotes; quotes, backslashes, control characters escaped),
    which both the SOMA parser (``ast``) and ``pandas.DataFrame.query`` read back as the same string."""
    if not isinstance(value, str) or not value:
        raise InputError(f"{what}: values must be non-empty strings, got {value!r}")
    return json.dumps(value, ensure_ascii=False)


def _clause(column: str, values: Sequence[str], negate: bool, what: str) -> str:
    unique = list(dict.fromkeys(values))
    items = ", ".join(_literal(v, what) for v in unique)
    return f"{column} {'not in' if negate else 'in'} [{items}]"


def obs_value_filter(tissues: Sequence[str] = (), cell_types: Sequence[str] = (), assays: Sequence[str] = (),
                     exclude_cell_types: Sequence[str] = (), exclude_dataset_ids: Sequence[str] = (),
                     primary_only: bool = True) -> str:
    """The census SOMA ``value_filter`` for the corpus cells.

    Parameters
    ----------
    tissues : ``tissue_general`` values to keep (empty = every tissue).
    cell_types : ``cell_type`` values to keep (empty = every type).
    assays : ``assay`` values to keep (empty = every assay), e.g. ``"10x 3' v3"``.
    exclude_cell_types : ``cell_type`` values removed (held out of pretraining).
    exclude_dataset_ids : ``dataset_id`` values removed (data sets used for evaluation).
    primary_only : keep only ``is_primary_data == True`` (drops cells repeated across data sets).

    Returns
    -------
    str : clauses joined by `` and `` in a fixed order (primary, tissues, cell types, assays, excluded types,
    excluded data sets), for example ``is_primary_data == True and tissue_general in ["blood"] and cell_type
    not in ["erythrocyte"]``; ``""`` when nothing is asked (every cell). Duplicated values are dropped, the
    first kept. Values are double-quoted with JSON escapes, so ``"``, ``'`` and ``\\`` inside a name cannot
    end the literal; the string is valid both for the census (tiledbsoma ``QueryCondition``) and for
    :meth:`pandas.DataFrame.query`.

    Raises
    ------
    InputError
        A value that is not a non-empty string (the message names the field).
    """
    parts = ["is_primary_data == True"] if primary_only else []
    for column, values, negate, what in (("tissue_general", tissues, False, "tissues"),
                                         ("cell_type", cell_types, False, "cell_types"),
                                         ("assay", assays, False, "assays"),
                                         ("cell_type", exclude_cell_types, True, "exclude_cell_types"),
                                         ("dataset_id", exclude_dataset_ids, True, "exclude_dataset_ids")):
        if isinstance(values, str):
            raise InputError(f"{what}: expected a list of strings, got the string {values!r}")
        if values:
            parts.append(_clause(column, list(values), negate, what))
    return " and ".join(parts)


@dataclass(frozen=True)
class CorpusFilter:
    """The corpus selection as fields (what :func:`obs_value_filter` turns into one expression)."""

    tissues: tuple[str, ...] = ()
    cell_types: tuple[str, ...] = ()
    assays: tuple[str, ...] = ()
    exclude_cell_types: tuple[str, ...] = ()
    exclude_dataset_ids: tuple[str, ...] = ()
    primary_only: bool = True

    @property
    def expression(self) -> str:
        """The full filter, exclusions included."""
        return obs_value_filter(self.tissues, self.cell_types, self.assays, self.exclude_cell_types,
                                self.exclude_dataset_ids, self.primary_only)

    @property
    def base(self) -> str:
        """The filter without the exclusions (to count what each exclusion removes)."""
        return obs_value_filter(self.tissues, self.cell_types, self.assays, (), (), self.primary_only)

    def columns(self) -> list[str]:
        """obs columns the filter and the cap read."""
        used = {"cell_type": True, "tissue_general": bool(self.tissues), "assay": bool(self.assays),
                "dataset_id": bool(self.exclude_dataset_ids), "is_primary_data": self.primary_only}
        return [c for c in OBS_COLUMNS if used.get(c)]


def _query_mask(obs: pd.DataFrame, value_filter: str, what: str) -> np.ndarray:
    """Boolean mask [n_obs] of the rows ``value_filter`` keeps, evaluated by ``pandas.DataFrame.query``."""
    if not value_filter:
        return np.ones(len(obs), dtype=bool)
    frame = obs.reset_index(drop=True)
    try:
        kept = frame.query(value_filter, engine="python")
    except (KeyError, NameError) as err:  # pandas: an unknown column is an UndefinedVariableError (NameError)
        raise InputError(f"{what}: obs lacks a column the filter needs ({err}); obs columns: "
                         f"{', '.join(map(str, obs.columns))}") from err
    mask = np.zeros(len(obs), dtype=bool)
    mask[kept.index.to_numpy()] = True
    return mask


def cap_per_type(obs: pd.DataFrame, cap: int, seed: int, label_key: str = "cell_type") -> np.ndarray:
    """Seeded choice of at most ``cap`` cells per type.

    Parameters
    ----------
    obs : cell metadata [n_obs, ...] with column ``label_key``.
    cap : most cells kept per type; ``0`` (or less) keeps every cell.
    seed : seed of ``numpy.random.default_rng``; the types are visited in sorted order, so the same obs, cap
        and seed always give the same cells.
    label_key : obs column of the cell type.

    Returns
    -------
    numpy.ndarray int64 [n_kept] : sorted row positions into ``obs``; every type keeps ``min(cap, its cells)``.

    Raises
    ------
    InputError
        ``label_key`` missing from obs or with missing values.
    """
    if label_key not in obs.columns:
        raise InputError(f"obs has no cell type column {label_key!r}; obs columns: {', '.join(map(str, obs.columns))}")
    labels = obs[label_key]
    if labels.isna().any():
        raise InputError(f"obs[{label_key!r}] has {int(labels.isna().sum())} missing values; every cell needs a type")
    labels = labels.astype(str).to_numpy()
    if cap <= 0:
        return np.arange(len(obs), dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in sorted(set(labels)):
        rows = np.flatnonzero(labels == label)
        chosen.append(rows if rows.size <= cap else rng.choice(rows, size=cap, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, dtype=np.int64)


def select_cells(obs: pd.DataFrame, value_filter: "str | CorpusFilter", cap: int, seed: int,
                 what: str = "obs") -> tuple[np.ndarray, dict[str, Any]]:
    """Apply the filter (by :meth:`pandas.DataFrame.query`) and the cap to a census-like obs table.

    Parameters
    ----------
    obs : pandas.DataFrame
        Cell metadata [n_obs, ...] with ``cell_type`` and the columns the filter names.
    value_filter : str or CorpusFilter
        A filter expression (``""`` = every cell), or a :class:`CorpusFilter` (then each exclusion is counted).
    cap, seed : int
        As :func:`cap_per_type`.
    what : str
        Name of the table in error messages.

    Returns
    -------
    (numpy.ndarray, dict)
        Sorted row positions int64 [n_selected]; a report with the filter, the cells passing it without and
        with the exclusions, the cells removed by each exclusion (``None`` when ``value_filter`` is a plain
        string), and the cells per type before and after the cap.

    Raises
    ------
    InputError
        obs lacks a column the filter needs, or ``cell_type`` is missing or has missing values.
    """
    spec = value_filter if isinstance(value_filter, CorpusFilter) else None
    expression = spec.expression if spec else value_filter
    keep = _query_mask(obs, expression, what)
    removed: dict[str, Any] = {"exclude_cell_types": None, "exclude_dataset_ids": None, "total": None}
    base_cells = None
    if spec is not None:
        base = _query_mask(obs, spec.base, what)
        base_cells = int(base.sum())
        for key, column in (("exclude_cell_types", "cell_type"), ("exclude_dataset_ids", "dataset_id")):
            values = getattr(spec, key)
            removed[key] = int((base & obs[column].astype(str).isin(values).to_numpy()).sum()) if values else 0
        removed["total"] = base_cells - int(keep.sum())
    rows = np.flatnonzero(keep)
    picked = rows[cap_per_type(obs.iloc[rows], cap, seed)]
    types = obs["cell_type"].astype(str)
    report = {"value_filter": expression, "cells_matching_without_exclusions": base_cells,
              "cells_removed": removed, "cells_matching": int(keep.sum()), "cap_per_type": int(cap),
              "seed": int(seed), "cells_selected": int(picked.size),
              "cells_per_type_before_cap": _counts(types.iloc[rows]),
              "cells_per_type": _counts(types.iloc[picked])}
    return picked, report


def _counts(col: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in col.value_counts().sort_index().items()}


def _import_census():
    try:
        import cellxgene_census
    except ImportError as err:
        raise InputError(f"--source census needs the optional package cellxgene-census, which is not installed "
                         f"({err}); install it with: {CENSUS_EXTRA}") from err
    return cellxgene_census


def _offline(census_version: str, stage: str, err: BaseException) -> InputError:
    return InputError(f"census_version {census_version!r}: cannot {stage} the CELLxGENE Census "
                      f"({type(err).__name__}: {err}); the corpus rule with source: census needs the internet "
                      f"(or set corpus.source to a downloaded census-like h5ad)")


def query_census(census_version: str, organism: str, value_filter: "str | CorpusFilter", cap: int, seed: int):
    """Query one census release: obs first, then the raw counts of the capped cells only, in one AnnData.

    Parameters
    ----------
    census_version : a dated release (``"2025-01-30"``); ``stable``/``latest`` move and are not reproducible.
    organism : ``"Homo sapiens"`` or ``"Mus musculus"`` (as ``cellxgene_census`` names them).
    value_filter : a SOMA filter string, or a :class:`CorpusFilter` (then each exclusion's removed cells are
        counted: the obs is read with the filter without exclusions, the exclusions are applied locally by
        the same expression).
    cap, seed : as :func:`cap_per_type`.

    Returns
    -------
    (anndata.AnnData [n_selected, genes], dict) : ``X`` raw counts (float32 CSR, census ``X["raw"]``), obs
    the census columns of :data:`OBS_COLUMNS`, ``obs_names`` ``census:<soma_joinid>``, cells ordered by
    ``soma_joinid``; var_names the gene symbols (``feature_name``, made unique; ``feature_id`` kept as a
    column). The dict is :func:`select_cells`' report plus ``census_version`` and ``organism``.

    Raises
    ------
    InputError
        As :func:`stream_census`.
    """
    parts = []
    report = stream_census(census_version, organism, value_filter, cap, seed, 0, parts.append)
    return parts[0], report


def stream_census(census_version: str, organism: str, value_filter: "str | CorpusFilter", cap: int, seed: int,
                  chunk_cells: int, write_chunk: Callable[[Any], None],
                  check_ids: Callable[[list[str]], Any] | None = None) -> dict[str, Any]:
    """Query one census release chunk by chunk, so memory is bounded by ``chunk_cells``, not the corpus.

    The obs table is read and filtered first (:func:`select_cells`); ``check_ids`` then sees every selected
    ``census:<soma_joinid>`` before any count is read (it raises to stop, e.g. :func:`check_disjoint`);
    then the raw counts are read with one ``get_anndata`` call per ``chunk_cells`` selected ids, in
    ``soma_joinid`` order, and each chunk (the AnnData contract of :func:`query_census`) goes to
    ``write_chunk``. ``chunk_cells`` 0 = one chunk.

    Parameters
    ----------
    census_version, organism, value_filter, cap, seed
        As :func:`query_census`.
    chunk_cells : int
        Most cells per ``get_anndata`` call and per chunk, cells; 0 = one chunk.
    write_chunk : callable
        Called with each chunk (anndata.AnnData [<= chunk_cells, genes], raw counts float32 CSR).
    check_ids : callable or None
        Called once with the list of selected ``census:<soma_joinid>`` ids before any count is read.

    Returns
    -------
    dict
        :func:`select_cells`' report plus ``census_version``, ``organism`` and ``chunks`` (number written).

    Raises
    ------
    InputError
        cellxgene-census not installed (says ``pip install 'cellgraph[census]'``); the census not reachable
        (no internet: the message names the version and the cause); an unknown ``census_version``; no cell
        matches the filter; whatever ``check_ids`` raises.
    """
    census_mod = _import_census()
    spec = value_filter if isinstance(value_filter, CorpusFilter) else None
    read_filter = (spec.base if spec else value_filter) or None
    try:
        census = census_mod.open_soma(census_version=census_version)
    except ValueError as err:
        raise InputError(f"census_version {census_version!r}: not a Census release ({err})") from err
    except Exception as err:  # noqa: BLE001 - requests/tiledb/botocore errors: reported with their cause
        raise _offline(census_version, "open", err) from err
    try:
        with census:
            columns = sorted(set(OBS_COLUMNS[:2]) | set(spec.columns() if spec else OBS_COLUMNS))
            obs = census_mod.get_obs(census, organism, value_filter=read_filter, column_names=columns)
            picked, report = select_cells(obs, value_filter, cap, seed, what=f"census {census_version}")
            if picked.size == 0:
                raise InputError(f"census_version {census_version!r}: no cell matches {report['value_filter']!r}")
            ids = np.sort(obs["soma_joinid"].to_numpy()[picked])
            if check_ids is not None:
                check_ids([f"{ID_PREFIX}{i}" for i in ids])
            step = chunk_cells if chunk_cells > 0 else ids.size
            for lo in range(0, ids.size, step):
                chunk = ids[lo:lo + step]
                adata = census_mod.get_anndata(census, organism, X_name="raw", obs_coords=chunk,
                                               obs_column_names=list(OBS_COLUMNS))
                write_chunk(_census_contract(adata, chunk))
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - a failed read mid-query: the same network message, with its cause
        raise _offline(census_version, "read from", err) from err
    report.update(census_version=census_version, organism=organism, chunks=-(-ids.size // step))
    return report


def _census_contract(adata, ids: np.ndarray):
    """Census AnnData -> obs_names ``census:<id>`` in ``ids`` order, gene symbols as var_names, CSR float32."""
    adata.obs_names = [f"{ID_PREFIX}{i}" for i in adata.obs["soma_joinid"].to_numpy()]
    adata = adata[[f"{ID_PREFIX}{i}" for i in ids]].copy()
    if "feature_name" in adata.var.columns:
        adata.var_names = adata.var["feature_name"].astype(str).to_numpy()
        adata.var_names_make_unique()
    adata.X = _counts_matrix(adata.X, "census X['raw']")
    return adata


def _counts_matrix(x, what: str) -> sp.csr_matrix:
    x = sp.csr_matrix(x) if not sp.issparse(x) else x.tocsr()
    x = x.astype(np.float32)
    v = x.data
    if v.size and (not np.all(np.isfinite(v)) or (v < 0).any() or (v != np.round(v)).any()):
        raise InputError(f"{what}: X must hold raw counts (finite, non-negative integers)")
    return x


def query_h5ad(path: str | Path, value_filter: "str | CorpusFilter", cap: int, seed: int):
    """The census stand-in: the same filter and cap applied to a local h5ad with census-like obs columns.

    Parameters
    ----------
    path : an h5ad whose ``X`` holds raw counts [cells, genes] and whose obs has the columns the filter names
        (``cell_type`` always; ``tissue_general``, ``assay``, ``dataset_id``, ``is_primary_data`` as used), for
        example a census slice saved with ``get_anndata(...).write_h5ad``. Opened backed: obs is read first,
        then only the selected rows of X.
    value_filter, cap, seed : as :func:`query_census`.

    Returns
    -------
    (anndata.AnnData [n_selected, genes], dict) : as :func:`query_census`; ``obs_names`` are
    ``census:<soma_joinid>`` when obs has ``soma_joinid``, else the file's obs_names. The dict adds
    ``input``.

    Raises
    ------
    InputError
        File missing or not an h5ad; obs lacks a column the filter needs; X not raw counts; duplicated
        cell ids; no cell matches.
    """
    path = require_file(path, "corpus source h5ad")
    backed = read_h5ad(path, backed="r")
    try:
        picked, report = select_cells(backed.obs, value_filter, cap, seed, what=str(path))
        if picked.size == 0:
            raise InputError(f"{path}: no cell matches {report['value_filter']!r}")
        adata = backed[picked].to_memory()
    finally:
        backed.file.close()
    if "soma_joinid" in adata.obs.columns:
        adata.obs_names = [f"{ID_PREFIX}{i}" for i in adata.obs["soma_joinid"].to_numpy()]
    if not adata.obs_names.is_unique:
        raise InputError(f"{path}: cell ids (obs_names / soma_joinid) repeat; they must be unique")
    adata.obs = adata.obs[[c for c in OBS_COLUMNS if c in adata.obs.columns]].copy()
    adata.X = _counts_matrix(adata.X, f"{path}: X")
    adata.layers, adata.obsm, adata.uns = {}, {}, {}
    report.update(input=str(path))
    return adata, report


def write_shards(adata, out_dir: str | Path, shard_cells: int) -> list[Path]:
    """Write ``adata`` as h5ad shards ``shard-00000.h5ad``... of at most ``shard_cells`` cells each.

    ``X`` is written as float32 CSR raw counts; obs categorical columns keep their full category list in
    every shard (so an on-disk concat equals the in-memory one). Each shard is written atomically; shards
    left by an earlier run in ``out_dir`` are removed first.

    Parameters
    ----------
    adata : anndata.AnnData
        Cells [n_cells, n_genes] whose ``X`` holds raw counts.
    out_dir : str or Path
        Folder of the shards (created if missing).
    shard_cells : int
        Most cells per shard, cells.

    Returns
    -------
    list of Path
        The shard paths in row order (``ceil(n_cells / shard_cells)`` of them).

    Raises
    ------
    InputError
        ``shard_cells`` < 1; ``X`` not raw counts (finite, non-negative integers).
    """
    if shard_cells < 1:
        raise InputError(f"shard_cells must be at least 1, got {shard_cells}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("shard-*.h5ad"):
        old.unlink()
    paths = []
    for k, lo in enumerate(range(0, adata.n_obs, shard_cells)):
        part = adata[lo:lo + shard_cells].copy()
        part.X = _counts_matrix(part.X, "corpus shard")
        path = out_dir / f"shard-{k:05d}.h5ad"
        with atomic_path(path) as tmp:
            part.write_h5ad(tmp)
        paths.append(path)
    return paths


def concat_shards(shards: Sequence[str | Path], out_path: str | Path) -> Path:
    """Concatenate h5ad shards (same genes) into ``out_path`` with ``anndata.experimental.concat_on_disk``:
    the corpus is assembled without loading it (``cellgraph.pp.tokenize.scan_corpus`` reads it backed, chunk
    by chunk). ``join="inner"``, ``merge="same"`` (var columns kept). Written atomically.

    Parameters
    ----------
    shards : sequence of str or Path
        The h5ad shards, concatenated along cells in this order.
    out_path : str or Path
        The h5ad to write.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    InputError
        ``shards`` is empty.
    """
    from anndata.experimental import concat_on_disk

    if not shards:
        raise InputError("no shards to concatenate")
    with atomic_path(out_path) as tmp:
        # Path objects: anndata 0.12.19 copies a single input file with in_file.is_dir(), which a str lacks
        concat_on_disk([Path(s) for s in shards], Path(tmp), axis=0, join="inner", merge="same")
    return Path(out_path)


def check_disjoint(corpus_obs_names: Iterable[str],
                   eval_obs_names_by_dataset: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """Count the corpus cell ids shared with each evaluation data set.

    Parameters
    ----------
    corpus_obs_names : the corpus' cell ids (``census:<soma_joinid>``).
    eval_obs_names_by_dataset : data set name -> its cell ids (compared as strings).

    Returns
    -------
    dict : data set name -> number of shared ids (all 0).

    Raises
    ------
    InputError
        Any data set shares ids with the corpus (the message names each one, its count and a few ids).
    """
    corpus = set(map(str, corpus_obs_names))
    shared = {name: sorted(corpus.intersection(map(str, ids))) for name, ids in eval_obs_names_by_dataset.items()}
    bad = {name: ids for name, ids in shared.items() if ids}
    if bad:
        detail = "; ".join(f"{name}: {len(ids)} shared (e.g. {', '.join(ids[:3])})" for name, ids in bad.items())
        raise InputError(f"the corpus is not disjoint from the evaluation data: {detail}")
    return {name: 0 for name in shared}


def _eval_obs_names(paths: Sequence[str | Path]) -> dict[str, list[str]]:
    out = {}
    for p in paths:
        p = require_file(p, "evaluation h5ad (check_against)")
        a = read_h5ad(p, backed="r")
        out[str(p)] = [str(n) for n in a.obs_names]
        a.file.close()
    return out


@dataclass(frozen=True)
class CorpusJob:
    """Everything one corpus build (:func:`build_corpus`) needs; ``cellgraph corpus`` builds it from its flags.

    Attributes
    ----------
    source : str
        ``"census"`` (the CELLxGENE Census, needs the internet) or ``"h5ad"`` (a local census-like h5ad).
    out : Path
        The corpus h5ad to write.
    manifest : Path
        The manifest JSON to write.
    spec : CorpusFilter
        The obs selection (default: every primary cell).
    input : Path or None
        ``source="h5ad"``: the census-like h5ad (default None; required then).
    census_version : str
        ``source="census"``: a dated release (default ``"2025-01-30"``).
    organism : str
        Census organism (default ``"Homo sapiens"``).
    cap_per_type : int
        Most cells kept per cell type, 0 = all (default 0; :func:`cap_per_type`).
    shard_cells : int
        Most cells per shard, cells (default 50,000).
    seed : int
        Seed of the per-type cap (default 0).
    check_against : tuple of str
        Evaluation h5ad files whose cell ids the corpus must not share (default none; :func:`check_disjoint`).
    """

    source: str
    out: Path
    manifest: Path
    spec: CorpusFilter = field(default_factory=CorpusFilter)
    input: Path | None = None
    census_version: str = "2025-01-30"
    organism: str = "Homo sapiens"
    cap_per_type: int = 0
    shard_cells: int = 50_000
    seed: int = 0
    check_against: tuple[str, ...] = ()


def build_corpus(job: CorpusJob) -> dict[str, Any]:
    """Query, disjointness check, shards, on-disk concat, manifest JSON. Returns the manifest.

    The disjointness check runs on the selected ids before anything is written, so a corpus that overlaps
    an evaluation set leaves no output. Shards live in a temporary folder next to ``job.out`` and are
    removed after the concat. The census is read one shard of ``shard_cells`` cells at a time
    (:func:`stream_census`), so memory is bounded by a shard; a local census-like h5ad is read whole.

    Parameters
    ----------
    job : CorpusJob
        The source, selection, cap, shard size, evaluation files and output paths.

    Returns
    -------
    dict
        The manifest (also written to ``job.manifest``): the job's settings, the selection report, ``genes``,
        ``cells_per_shard``, ``disjoint_from`` (evaluation file -> 0) and ``output``.

    Raises
    ------
    InputError
        ``job.source`` not ``census``/``h5ad``; ``source="h5ad"`` without ``job.input``; and what
        :func:`query_h5ad`, :func:`stream_census` or :func:`check_disjoint` raise (e.g. a shared cell id).
    """
    if job.source == "census":
        return _build_streamed(job)
    if job.source != "h5ad":
        raise InputError(f"--source must be one of {', '.join(SOURCES)}, got {job.source!r}")
    if job.input is None:
        raise InputError("--source h5ad needs --in (the census-like h5ad)")
    adata, report = query_h5ad(job.input, job.spec, job.cap_per_type, job.seed)
    disjoint = check_disjoint(adata.obs_names, _eval_obs_names(job.check_against))
    Path(job.out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".corpus-shards-", dir=Path(job.out).parent) as tmp:
        shards = write_shards(adata, tmp, job.shard_cells)
        sizes = [min(job.shard_cells, adata.n_obs - k * job.shard_cells) for k in range(len(shards))]
        concat_shards(shards, job.out)
    return _write_manifest(job, report, int(adata.n_vars), sizes, disjoint)


def _write_manifest(job: CorpusJob, report: dict, n_genes: int, sizes: list[int], disjoint: dict) -> dict[str, Any]:
    """The manifest JSON of a built corpus (written to ``job.manifest``, returned)."""
    manifest = {"source": job.source, "input": str(job.input) if job.input else None,
                "census_version": job.census_version if job.source == "census" else None,
                "organism": job.organism, "filter": asdict(job.spec), **report,
                "excluded_cell_types": list(job.spec.exclude_cell_types),
                "excluded_dataset_ids": list(job.spec.exclude_dataset_ids),
                "genes": n_genes, "shard_cells": job.shard_cells, "cells_per_shard": sizes,
                "disjoint_from": disjoint, "output": str(job.out)}
    write_json(job.manifest, manifest)
    return manifest


def _build_streamed(job: CorpusJob) -> dict[str, Any]:
    """:func:`build_corpus` for the census: :func:`stream_census` writes one shard per ``shard_cells`` cells
    (memory bounded by a shard), after the disjointness check on the selected ids."""
    Path(job.out).parent.mkdir(parents=True, exist_ok=True)
    checked: dict[str, Any] = {}
    sizes: list[int] = []
    genes: list[int] = []
    with tempfile.TemporaryDirectory(prefix=".corpus-shards-", dir=Path(job.out).parent) as tmp:
        shards: list[Path] = []

        def write(chunk) -> None:
            """Write one census chunk as the next shard."""
            shards.append(write_shards(chunk, Path(tmp) / f"part-{len(shards):05d}", job.shard_cells)[0])
            sizes.append(int(chunk.n_obs))
            genes.append(int(chunk.n_vars))

        def check(names: list[str]) -> None:
            """The disjointness check, before any count is read."""
            checked.update(check_disjoint(names, _eval_obs_names(job.check_against)))

        report = stream_census(job.census_version, job.organism, job.spec, job.cap_per_type, job.seed,
                               job.shard_cells, write, check)
        concat_shards(shards, job.out)
    return _write_manifest(job, report, genes[0], sizes, checked)
