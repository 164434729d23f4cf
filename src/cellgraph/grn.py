r"""grn stage: ARACNe gene regulatory networks per cell type and their consensus.

For every cell type that is not held out, ARACNe (:func:`cellgraph.aracne.aracne`) runs on the type's
``train`` cells (or on metacells of ``k`` of them) over the genes ``var["highly_variable"]`` plus the
regulators of ``regulators.txt`` present in the data. Genes (regulators included) expressed (``X > 0``)
in fewer than ``--min-cells-expressed`` train cells of a type are skipped for that type and reported.

**Metacells** (``--metacell-k k > 0``): each train cell is replaced by the sum of the raw counts
(``layers["counts"]``, else ``expm1(X)``) of itself and its ``k - 1`` nearest train neighbours of the
same type (Euclidean, on ``obsm["X_pca"]`` when present, else on the log expression of the genes), then
normalised to the same total (a kNN metacell as in PISCES / ARACNe3 practice). ARACNe only uses ranks.

**Consensus** (GREmLN, Zhang et al. 2025, appendix A.1): an edge ``regulator -> target`` found in
``n_types`` of the ``T`` type networks is tested against ``Binomial(T, p)``, ``p`` = the mean over
types of the edge density ``|E_c| / (R_c (G_c - 1))`` (``R_c`` regulators, ``G_c`` genes of type c):
``pvalue = P(X >= n_types)``; q-values by Benjamini-Hochberg over all ``R (G - 1)`` possible edges of the
union of the types' genes; edges with ``qvalue <= --consensus-fdr`` form ``consensus.tsv``.

Null-model cache: ``--cache-dir``, default ``<out-dir>/../.cache/aracne_null`` (for
``--out-dir results/grn``: ``results/.cache/aracne_null``); one small ``.npy`` per bootstrap sample size.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import aracne as engine
from .errors import InputError
from .io import atomic_path, require_file, write_json, write_tsv

log = logging.getLogger(__name__)

__all__ = ["configure_parser", "run", "read_regulators", "cell_type_matrix", "metacells", "consensus"]

DEFAULTS = dict(
    n_bootstraps=50,
    bootstrap="subsample",
    mi_method="pvalue",
    mi_pvalue=1e-4,
    mi_alpha=0.05,
    dpi_tolerance=0.0,
    consolidation="poisson",
    correction="bonferroni",
    consolidation_alpha=0.05,
    metacell_k=0,
    min_cells_expressed=10,
    consensus_fdr=0.05,
    permutation_control=True,
    threads=2,
)
NETWORK_COLUMNS = ["cell_type", "regulator", "target", "mi", "pvalue", "count"]
CONSENSUS_COLUMNS = ["regulator", "target", "n_types", "pvalue", "qvalue"]


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """The ARACNe engine's options (seed, bootstraps, MI threshold, DPI, consolidation, threads), shared by
    ``cellgraph grn`` and ``cellgraph aracne``; defaults from :data:`DEFAULTS` (= config/config.yaml)."""
    d = DEFAULTS
    p.add_argument("--seed", type=int, default=0, help="seeds tie-breaking, bootstraps, null model (default 0)")
    p.add_argument("--n-bootstraps", type=int, default=d["n_bootstraps"], help="bootstraps (default %(default)s)")
    p.add_argument("--bootstrap", choices=list(engine.BOOTSTRAPS), default=d["bootstrap"],
                   help="subsample: 1-1/e of the cells without replacement (ARACNe3); replacement: n draws over all "
                        "cells; none: all cells (default %(default)s)")
    p.add_argument("--mi-method", choices=list(engine.MI_METHODS), default=d["mi_method"],
                   help="MI threshold: pvalue (null p-value, ARACNe-AP), fdr (Benjamini-Hochberg over null p-values, "
                        "ARACNe3 --alpha) or fwer (Bonferroni) (default %(default)s)")
    p.add_argument("--mi-pvalue", type=float, default=d["mi_pvalue"], help="p-value of the MI threshold (default %(default)s)")
    p.add_argument("--mi-alpha", type=float, default=d["mi_alpha"], help="level of --mi-method fdr/fwer (default %(default)s)")
    p.add_argument("--dpi-tolerance", type=float, default=d["dpi_tolerance"], help="DPI tolerance in [0, 1) (default %(default)s)")
    p.add_argument("--consolidation", choices=["poisson", "binomial"], default=d["consolidation"],
                   help="bootstrap consolidation test: poisson (ARACNe-AP) or binomial (ARACNe3) (default %(default)s)")
    p.add_argument("--correction", choices=["bonferroni", "bh"], default=d["correction"],
                   help="multiple-testing correction of the consolidation (default %(default)s)")
    p.add_argument("--consolidation-alpha", type=float, default=d["consolidation_alpha"],
                   help="keep edges with corrected p-value below this (default %(default)s)")
    p.add_argument("--threads", type=int, default=d["threads"], help="numba threads (results do not depend on it) (default %(default)s)")


def configure_parser(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    p.add_argument("--adata", required=True, help="expression stage output (adata.h5ad)")
    p.add_argument("--regulators", required=True, help="regulators.txt, one HGNC symbol per line")
    p.add_argument("--out-dir", required=True, help="folder for networks.tsv.gz, consensus.tsv, report.json")
    add_engine_arguments(p)
    p.add_argument("--metacell-k", type=int, default=d["metacell_k"], help="cells per kNN metacell; 0 = off (default %(default)s)")
    p.add_argument("--min-cells-expressed", type=int, default=d["min_cells_expressed"],
                   help="skip (and report) genes expressed in fewer train cells of a type (default %(default)s)")
    p.add_argument("--consensus-fdr", type=float, default=d["consensus_fdr"], help="FDR of the consensus network (default %(default)s)")
    p.add_argument("--permutation-control", action=argparse.BooleanOptionalAction, default=d["permutation_control"],
                   help="also run each type on its genes permuted independently across its cells (no gene-gene "
                        "dependence left) and report the edges found there: an empirical false-discovery estimate "
                        "(default %(default)s)")
    p.add_argument("--cache-dir", default=None, help="null-model cache (default <out-dir>/../.cache/aracne_null)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="per-bootstrap networks (one subfolder per cell type) so an interrupted run resumes; "
                        "default: none")


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def read_regulators(path) -> list[str]:
    """Regulator symbols of ``regulators.txt`` (one per line; blank lines and ``#`` comments ignored).

    Raises
    ------
    InputError
        If the file is missing, unreadable, empty, or a line holds more than one field.
    """
    path = require_file(path, "regulators")
    try:
        lines = path.read_text().splitlines()
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


def _read_adata(path):
    import anndata as ad

    path = require_file(path, "adata")
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - any parse failure is the user's file
        raise InputError(f"{path}: cannot be read as h5ad ({err})") from err
    if "split" not in adata.obs:
        raise InputError(f"{path}: obs has no 'split' column (expected train/val/test/heldout from the expression stage)")
    label_key = (adata.uns.get("cellgraph") or {}).get("label_key")
    if label_key is None:
        raise InputError(f"{path}: uns['cellgraph']['label_key'] is missing")
    label_key = str(label_key)
    if label_key not in adata.obs:
        raise InputError(f"{path}: obs has no label column {label_key!r} (uns['cellgraph']['label_key'])")
    if "highly_variable" not in adata.var:
        raise InputError(f"{path}: var has no 'highly_variable' column")
    bad = sorted(set(adata.obs["split"].astype(str)) - {"train", "val", "test", "heldout"})
    if bad:
        raise InputError(f"{path}: obs['split'] has values {bad[:5]}; expected train/val/test/heldout")
    if not adata.var_names.is_unique:
        raise InputError(f"{path}: var_names are not unique")
    return adata, label_key


def _dense_rows(x, rows, cols):
    import scipy.sparse as sp

    sub = x[rows][:, cols]
    return np.asarray(sub.toarray() if sp.issparse(sub) else sub, dtype=np.float64)


def cell_type_matrix(adata, cells: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """Log expression ``adata.X`` of the given obs positions and var positions, as [genes x cells]."""
    return _dense_rows(adata.X, cells, genes).T.copy()


def metacells(adata, cells: np.ndarray, genes: np.ndarray, k: int) -> np.ndarray:
    """kNN metacells of ``cells`` (obs positions): [genes x cells], each the normalised sum of the raw
    counts of a cell and its ``k - 1`` nearest neighbours among ``cells``.

    Raises
    ------
    InputError
        If ``k`` exceeds the number of cells.
    """
    from sklearn.neighbors import NearestNeighbors

    if k > cells.size:
        raise InputError(f"--metacell-k {k} exceeds the {cells.size} train cells of a cell type")
    if "X_pca" in adata.obsm:
        emb = np.asarray(adata.obsm["X_pca"])[cells]
    else:
        emb = _dense_rows(adata.X, cells, genes)
    nn = NearestNeighbors(n_neighbors=k).fit(emb)
    _, idx = nn.kneighbors(emb)  # includes the cell itself (distance 0) first
    if "counts" in adata.layers:
        counts = _dense_rows(adata.layers["counts"], cells, np.arange(adata.n_vars))
    else:
        counts = np.expm1(_dense_rows(adata.X, cells, np.arange(adata.n_vars)))
    summed = counts[idx].sum(axis=1)  # [cells, all genes]
    total = summed.sum(axis=1, keepdims=True)
    total[total == 0] = 1.0
    norm = np.log1p(summed / total * 1e6)
    return norm[:, genes].T.copy()


# --------------------------------------------------------------------------------------------------
# Consensus
# --------------------------------------------------------------------------------------------------


def consensus(networks: pd.DataFrame, universes: dict[str, tuple[int, int]], fdr: float) -> tuple[pd.DataFrame, dict]:
    """Consensus of per-type networks by the binomial edge-recurrence null (GREmLN appendix A.1).

    Parameters
    ----------
    networks : DataFrame with ``cell_type, regulator, target``.
    universes : cell type -> (regulator names, gene names) it was run on; every type counts in ``T``,
        also one with no edges.
    fdr : Benjamini-Hochberg level.

    Returns
    -------
    (DataFrame ``regulator, target, n_types, pvalue, qvalue`` of edges with ``qvalue <= fdr``, sorted by
    qvalue then names; dict with ``T``, ``p``, ``densities``, ``n_possible``, ``n_tested_edges``).
    """
    from scipy.stats import binom

    types = sorted(universes)
    t = len(types)
    dens = {}
    for c in types:
        r, g = len(universes[c][0]), len(universes[c][1])
        e = int((networks["cell_type"] == c).sum())
        dens[c] = e / (r * (g - 1)) if r and g > 1 else 0.0
    p = float(np.mean(list(dens.values()))) if types else 0.0
    # all possible edges of the union universe: regulators of any type x other genes of any type
    regs_u = set().union(*(set(u[0]) for u in universes.values())) if types else set()
    genes_u = set().union(*(set(u[1]) for u in universes.values())) if types else set()
    n_possible = len(regs_u) * max(len(genes_u) - 1, 0)
    counts = networks.groupby(["regulator", "target"], sort=True).size().rename("n_types").reset_index()
    if counts.empty or p <= 0:
        return pd.DataFrame(columns=CONSENSUS_COLUMNS), dict(T=t, p=p, densities=dens, n_possible=n_possible, n_tested_edges=0)
    pv = binom.sf(counts["n_types"].to_numpy() - 1, t, p)
    q = engine._correct(pv, max(n_possible, len(counts)), "bh")
    counts["pvalue"] = pv
    counts["qvalue"] = q
    out = counts[counts["qvalue"] <= fdr].sort_values(["qvalue", "regulator", "target"], kind="stable")
    info = dict(T=t, p=p, densities=dens, n_possible=int(n_possible), n_tested_edges=int(len(counts)))
    return out[CONSENSUS_COLUMNS].reset_index(drop=True), info


# --------------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------------


def _check_args(args) -> None:
    if args.n_bootstraps < 1:
        raise InputError(f"--n-bootstraps must be >= 1, got {args.n_bootstraps}")
    if not 0 < args.mi_pvalue < 1:
        raise InputError(f"--mi-pvalue must be in (0, 1), got {args.mi_pvalue}")
    if not 0 < args.mi_alpha < 1:
        raise InputError(f"--mi-alpha must be in (0, 1), got {args.mi_alpha}")
    if not 0 <= args.dpi_tolerance < 1:
        raise InputError(f"--dpi-tolerance must be in [0, 1), got {args.dpi_tolerance}")
    if not 0 < args.consolidation_alpha <= 1:
        raise InputError(f"--consolidation-alpha must be in (0, 1], got {args.consolidation_alpha}")
    if not 0 < args.consensus_fdr <= 1:
        raise InputError(f"--consensus-fdr must be in (0, 1], got {args.consensus_fdr}")
    if args.metacell_k < 0 or args.metacell_k == 1:
        raise InputError(f"--metacell-k must be 0 (off) or >= 2, got {args.metacell_k}")
    if args.min_cells_expressed < 0:
        raise InputError(f"--min-cells-expressed must be >= 0, got {args.min_cells_expressed}")
    if args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")


def _names(xs, limit=50):
    xs = sorted(xs)
    return xs if len(xs) <= limit else xs[:limit] + [f"... ({len(xs) - limit} more)"]


def run(args: argparse.Namespace) -> None:
    _check_args(args)
    regulators = read_regulators(args.regulators)
    adata, label_key = _read_adata(args.adata)
    out = Path(args.out_dir)
    cache_dir = Path(args.cache_dir) if args.cache_dir else out.parent / ".cache" / "aracne_null"

    var_names = np.asarray(adata.var_names, dtype=str)
    present = [r for r in regulators if r in set(var_names)]
    if not present:
        raise InputError(
            f"{args.regulators}: none of the {len(regulators)} regulators is a gene of {args.adata} "
            f"(first: {regulators[:5]}; var_names look like {list(var_names[:3])})"
        )
    hvg = adata.var["highly_variable"].to_numpy().astype(bool)
    gene_mask = hvg | np.isin(var_names, present)
    gene_pos = np.flatnonzero(gene_mask)
    split = adata.obs["split"].astype(str).to_numpy()
    labels = adata.obs[label_key].astype(str).to_numpy()
    heldout = {str(t) for t in np.atleast_1d((adata.uns.get("cellgraph") or {}).get("heldout_types", []))}
    heldout |= set(labels[split == "heldout"])
    types = sorted(set(labels[split == "train"]) - heldout)
    if not types:
        raise InputError(f"{args.adata}: no cell type has train cells (obs['split'] == 'train') outside the held-out types")

    report = dict(
        inputs=dict(adata=str(args.adata), regulators=str(args.regulators)),
        params={k: getattr(args, k) for k in DEFAULTS} | dict(seed=args.seed, cache_dir=str(cache_dir)),
        regulators_read=len(regulators),
        regulators_present=len(present),
        regulators_absent_from_data=dict(count=len(regulators) - len(present),
                                         names=_names(set(regulators) - set(present))),
        highly_variable_genes=int(hvg.sum()),
        genes_considered=int(gene_pos.size),
        heldout_types=sorted(heldout),
        tie_breaking="ranks over each type's train cells (or metacells); ties broken by a seeded random key per (gene, cell); "
        "repeated cells of a with-replacement bootstrap by draw order",
        cell_types={},
    )
    is_reg = np.isin(var_names[gene_pos], present)
    frames, universes = [], {}
    t_all = time.perf_counter()
    for ti, ct in enumerate(types):
        t0 = time.perf_counter()
        cells = np.flatnonzero((labels == ct) & (split == "train"))
        expressed = np.asarray((_dense_rows(adata.X, cells, gene_pos) > 0).sum(axis=0)).ravel()
        ok = expressed >= args.min_cells_expressed
        skipped_genes = var_names[gene_pos[~ok & ~is_reg]]
        skipped_regs = var_names[gene_pos[~ok & is_reg]]
        keep_pos = gene_pos[ok]
        regs_ct = [str(g) for g in var_names[gene_pos[ok & is_reg]]]
        entry = dict(
            train_cells=int(cells.size),
            genes=int(keep_pos.size),
            regulators=len(regs_ct),
            skipped_not_expressed=dict(
                genes=dict(count=int(skipped_genes.size), names=_names(skipped_genes.tolist())),
                regulators=dict(count=int(skipped_regs.size), names=_names(skipped_regs.tolist())),
            ),
        )
        report["cell_types"][ct] = entry
        if not regs_ct or keep_pos.size < 2:
            entry["status"] = "skipped: no regulator expressed in enough train cells"
            log.warning("%s: skipped (no regulator expressed in >= %d train cells)", ct, args.min_cells_expressed)
            continue
        if args.metacell_k:
            expr = metacells(adata, cells, keep_pos, args.metacell_k)
            entry["metacells"] = int(expr.shape[1])
        else:
            expr = cell_type_matrix(adata, cells, keep_pos)
        seed_ct = int(np.random.SeedSequence([args.seed, ti]).generate_state(1)[0])
        settings = dict(
            n_bootstraps=args.n_bootstraps, bootstrap=args.bootstrap, mi_pvalue=args.mi_pvalue,
            dpi_tolerance=args.dpi_tolerance, consolidation=args.consolidation, correction=args.correction,
            alpha=args.consolidation_alpha, seed=seed_ct, threads=args.threads, cache_dir=cache_dir,
            null_seed=args.seed, mi_method=args.mi_method, mi_alpha=args.mi_alpha,
        )
        try:
            df = engine.aracne(
                expr, var_names[keep_pos], regs_ct, **settings,
                checkpoint_dir=Path(args.checkpoint_dir) / f"type{ti:03d}" if args.checkpoint_dir else None,
            )
        except ValueError as err:
            raise InputError(f"{args.adata}: cell type {ct!r}: {err}") from err
        if args.permutation_control:
            # the same run on data with every gene permuted independently across the type's cells: each
            # marginal is kept, every gene-gene dependence removed, so every edge found is a false one
            rng = np.random.default_rng([args.seed, ti, 7])
            control = engine.aracne(rng.permuted(expr, axis=1), var_names[keep_pos], regs_ct, **settings)
            entry["permutation_control"] = dict(
                edges=int(len(control)),
                empirical_fdr=float(min(1.0, len(control) / len(df))) if len(df) else None,
            )
            log.info("%s: %d edges on gene-permuted data (empirical FDR %s)", ct, len(control),
                     entry["permutation_control"]["empirical_fdr"])
        df.insert(0, "cell_type", ct)
        frames.append(df)
        universes[ct] = (regs_ct, [str(g) for g in var_names[keep_pos]])
        a = df.attrs
        entry.update(
            status="ok",
            seed=seed_ct,
            samples_per_bootstrap=a["n_per_bootstrap"],
            mi_threshold_nats=a["mi_threshold"],
            mi_thresholds_per_bootstrap=a["mi_thresholds_per_bootstrap"],
            constant_genes_skipped=dict(count=len(a["constant_genes"]), names=_names(a["constant_genes"])),
            bootstraps_resumed=a["bootstraps_resumed"],
            pairs_tested=a["n_tested"],
            edges_above_threshold_per_bootstrap=a["edges_above_threshold"],
            edges_after_dpi_per_bootstrap=a["edges_per_bootstrap"],
            poisson_lambda=a["poisson_lambda"],
            edges=int(len(df)),
        )
        log.info("%s: %d cells, %d genes, %d regulators -> %d edges (%.1f s)", ct, cells.size, keep_pos.size,
                 len(regs_ct), len(df), time.perf_counter() - t0)
    if not frames:
        raise InputError(f"{args.adata}: no cell type had a regulator expressed in >= {args.min_cells_expressed} train cells")
    networks = pd.concat(frames, ignore_index=True)[NETWORK_COLUMNS]
    no_edges = sorted(ct for ct in universes if not (networks["cell_type"] == ct).any())
    report["cell_types_without_edges"] = no_edges
    if networks.empty:
        raise InputError(
            f"{args.adata}: no edge survived in any of the {len(universes)} cell types with --mi-pvalue "
            f"{args.mi_pvalue}, --n-bootstraps {args.n_bootstraps}, --consolidation-alpha "
            f"{args.consolidation_alpha} (consolidation needs several bootstraps; a larger --mi-pvalue or more "
            f"--n-bootstraps finds more edges)"
        )
    if args.permutation_control:
        control_edges = sum(e["permutation_control"]["edges"] for e in report["cell_types"].values()
                            if "permutation_control" in e)
        report["permutation_control"] = dict(
            edges=int(control_edges), real_edges=int(len(networks)),
            empirical_fdr=float(min(1.0, control_edges / len(networks))) if len(networks) else None,
            meaning="edges found on each type's data with every gene permuted independently across cells, "
                    "at the same settings, over the edges found on the real data",
        )
    if no_edges:
        log.warning("grn: no edge survived for %d cell types (%s); more --n-bootstraps or a larger "
                    "--mi-pvalue find more (check the permutation control's empirical FDR)", len(no_edges), ", ".join(no_edges))
    cons, info = consensus(networks, universes, args.consensus_fdr)
    report["consensus"] = info | dict(edges=int(len(cons)), fdr=args.consensus_fdr)
    report["edges_total"] = int(len(networks))
    log.info("grn: %d edges over %d cell types, %d consensus edges (%.1f s)", len(networks), len(frames), len(cons),
             time.perf_counter() - t_all)

    with atomic_path(out / "networks.tsv.gz") as tmp:
        # no file name and mtime 0 in the gzip header: same seed, same bytes
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(networks.to_csv(sep="\t", index=False, float_format="%.6g").encode())
    write_tsv(cons, out / "consensus.tsv")
    write_json(out / "report.json", report)
