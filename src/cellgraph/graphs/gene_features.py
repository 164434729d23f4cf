r"""Fixed gene features for perturbation models: one row per gene, the same for seen and unseen targets.

A model that learns one free embedding row per gene has nothing to say about a gene it never saw perturbed.
These features are computed from data that exist for every gene of the universe:

- :func:`random_walk_features`: random walk with restart (RWR) profiles on the *full* multigraph (all nodes,
  all edges, not only the edges inside the universe), one block per graph type, reduced by a truncated SVD
  over the universe genes. Directed graphs give two blocks (walks along and against the edges); signed graphs
  (DoRothEA/CollecTRI mode of regulation) give the activation and repression subgraphs separately, so the sign
  of an edge reaches the features. RWR: Tong, Faloutsos & Pan 2006, *Fast random walk with restart and its
  applications*, ICDM, eq. 1, :math:`r = c\,W r + (1 - c)\,e`; here :math:`W` is the column-stochastic
  transition matrix and :math:`c = 1 - \text{restart}`.
- :func:`gremln_vectors`: the input gene embeddings of a trained GREmLN model (``cellgraph train``) for the
  genes its vocabulary covers (:func:`embedding_features` turns them into feature columns).
- :func:`expression_loadings`: gene loadings of a PCA of training cells (genes not measured get zeros and a
  ``measured`` indicator column), the gene embedding of the linear baseline of Ahlmann-Eltze et al. 2025
  (*Nature Methods* 22, "Deep-learning-based gene perturbation effect prediction does not yet outperform
  simple linear baselines").
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from ..io import require_file

__all__ = ["rwr_profiles", "random_walk_features", "gremln_vectors", "embedding_features", "expression_loadings",
           "standardize_columns"]


def _transition(edge_index: np.ndarray, weight: np.ndarray, n: int) -> sp.csr_matrix:
    """Column-stochastic W [n, n] with W[i, j] = w_ji / sum_k w_jk for an edge j -> i (|w| used)."""
    a = sp.coo_matrix((np.abs(weight).astype(np.float64), (edge_index[1], edge_index[0])), shape=(n, n)).tocsr()
    a.sum_duplicates()
    out_deg = np.asarray(a.sum(0)).ravel()  # [n] column sums = out-degree of j
    inv = np.divide(1.0, out_deg, out=np.zeros_like(out_deg), where=out_deg > 0)
    return (a @ sp.diags(inv)).tocsr()


def rwr_profiles(edge_index: np.ndarray, weight: np.ndarray, n: int, seeds: np.ndarray, *, restart: float = 0.3,
                 n_iter: int = 30) -> np.ndarray:
    r"""RWR stationary profiles from each seed node -> float64 [n_seeds, n].

    Power iteration of :math:`R \leftarrow (1-\text{restart})\,W R + \text{restart}\,E` for ``n_iter`` steps
    (the error falls as :math:`(1-\text{restart})^{n\_iter}`, 2e-5 with the defaults), W column-stochastic.
    Probability mass that reaches a node without out-edges is lost, so rows sum to at most 1 (dangling nodes
    are not redistributed).

    Parameters
    ----------
    edge_index : np.ndarray
        int [2, E] over nodes 0..n-1; walks go source -> target (mirror undirected graphs before calling).
    weight : np.ndarray
        [E] edge weights; absolute values are used, duplicate edges summed.
    n : int
        Number of nodes.
    seeds : np.ndarray
        int [S] restart nodes, one profile each.
    restart : float
        Restart probability per step, in (0, 1].
    n_iter : int
        Number of power-iteration steps.

    Returns
    -------
    np.ndarray
        float64 [S, n]; row s is the visiting probability of each node for walks restarting at seeds[s].

    Raises
    ------
    ValueError
        When ``restart`` is outside (0, 1].

    References
    ----------
    Tong, Faloutsos & Pan 2006, *Fast random walk with restart and its applications*, ICDM, eq. 1.
    """
    if not 0.0 < restart <= 1.0:
        raise ValueError(f"restart must be in (0, 1], not {restart}")
    w = _transition(edge_index, weight, n)
    e = np.zeros((n, len(seeds)))
    e[np.asarray(seeds), np.arange(len(seeds))] = 1.0
    r = e.copy()
    for _ in range(n_iter):
        r = (1.0 - restart) * (w @ r) + restart * e
    return r.T  # [S, n]


def _blocks(mg: dict):
    """(name, edge_index [2, E], weight [E]) walk graphs of a multigraph: undirected graphs mirrored; directed
    graphs in both orientations; signed graphs split into the positive and the negative part."""
    for g, ei in mg["edge_index"].items():
        if ei.numel() == 0:
            continue
        ei = ei.numpy()
        w = mg["edge_weight"][g].numpy()
        parts = [("", np.ones(len(w), bool))]
        if (w < 0).any():
            parts = [("+", w > 0), ("-", w < 0)]
        for sign, keep in parts:
            e, ww = ei[:, keep], w[keep]
            if mg["directed"][g]:
                yield f"{g}{sign}:out", e, ww
                yield f"{g}{sign}:in", e[::-1], ww
            else:
                yield f"{g}{sign}", np.concatenate([e, e[::-1]], 1), np.concatenate([ww, ww])


def random_walk_features(mg: dict, genes: list[str], *, dim: int = 16, restart: float = 0.3, n_iter: int = 30,
                         seed: int = 0) -> tuple[np.ndarray, list[str], dict]:
    r"""RWR features of ``genes`` on the full multigraph -> (float32 [G, B * dim], column names, report).

    For every walk graph (see module docstring; B blocks) the RWR profiles of the universe genes over all N
    multigraph nodes are transformed by :math:`\log(1 + 10^4 r)` (profiles span several orders of magnitude)
    and reduced to ``dim`` columns by a truncated SVD over the G rows (``sklearn.decomposition.TruncatedSVD``,
    seeded), after removing the column means. Genes absent from the multigraph, or with no edge in a graph, get
    a zero row in that block (their walk stays on the seed; its own column is dropped before the SVD). Columns
    are scaled to unit standard deviation.

    Parameters
    ----------
    mg : dict
        :func:`cellgraph.graphs.multigraph.load_multigraph` dict (nodes, directed, edge_index, edge_weight).
    genes : list of str
        The universe, length G.
    dim : int
        SVD columns per block.
    restart : float
        RWR restart probability, in (0, 1] (:func:`rwr_profiles`).
    n_iter : int
        RWR power-iteration steps.
    seed : int
        ``random_state`` of the truncated SVD.

    Returns
    -------
    tuple
        (features float32 [G, B * dim]; column names ``rwr_<block>_<i>``, length B * dim; report dict: genes,
        genes_not_in_multigraph, no_edge_rows {block: count}).

    Raises
    ------
    ValueError
        When ``restart`` is outside (0, 1] and the multigraph has an edge (:func:`rwr_profiles`).
    """
    from sklearn.decomposition import TruncatedSVD

    pos = {n: i for i, n in enumerate(mg["nodes"])}
    present = np.array([g in pos for g in genes])
    seeds = np.array([pos[g] for g in genes if g in pos], dtype=np.int64)
    n = len(mg["nodes"])
    blocks, names = [], []
    rep = {"genes": len(genes), "genes_not_in_multigraph": int((~present).sum()), "no_edge_rows": {}}
    for name, ei, w in _blocks(mg):
        r = rwr_profiles(ei, w, n, seeds, restart=restart, n_iter=n_iter)  # [S, n]
        r[np.arange(len(seeds)), seeds] = 0.0  # the restart mass on the seed itself says nothing
        alone = r.sum(1) == 0
        prof = np.log1p(1e4 * r)
        prof[~alone] -= prof[~alone].mean(0)
        k = int(min(dim, max(1, (~alone).sum() - 1)))
        z = np.zeros((len(genes), dim))
        if (~alone).sum() > 1:
            z_rows = np.zeros((len(seeds), dim))
            z_rows[~alone, :k] = TruncatedSVD(k, random_state=seed).fit_transform(prof[~alone])
            z[present] = z_rows
        blocks.append(z)
        names += [f"rwr_{name}_{i}" for i in range(dim)]
        rep["no_edge_rows"][name] = int(alone.sum() + (~present).sum())
    x = np.concatenate(blocks, 1) if blocks else np.zeros((len(genes), 0))
    return standardize_columns(x).astype(np.float32), names, rep


def gremln_vectors(path, genes: list[str]):
    """GREmLN gene embeddings (``state_dict["gene_emb.weight"]`` of a ``cellgraph train`` model.pt) of ``genes``.

    Genes outside the model's vocabulary get a zero row and known False.

    Parameters
    ----------
    path : str or path-like
        The ``model.pt`` of ``cellgraph train`` (``--gremln-model``).
    genes : list of str
        Gene symbols, length G.

    Returns
    -------
    tuple
        (vectors float32 tensor [G, d]; known bool tensor [G]; report dict: gremln_model,
        set_genes_initialised, set_genes_not_in_gremln_vocab).

    Raises
    ------
    InputError
        When the file is missing or unreadable, or lacks ``gene_emb.weight`` or ``vocab``.
    """
    import torch

    path = require_file(path, "--gremln-model")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        weight, names = obj["state_dict"]["gene_emb.weight"], list(obj["vocab"])
    except Exception as err:  # noqa: BLE001
        raise InputError(f"--gremln-model {path}: expected a cellgraph train model.pt with gene_emb.weight "
                         f"and vocab ({type(err).__name__}: {err})") from err
    pos = {g: i for i, g in enumerate(names)}
    vec = torch.zeros(len(genes), weight.shape[1])
    known = torch.zeros(len(genes), dtype=torch.bool)
    for i, g in enumerate(genes):
        if g in pos:
            vec[i], known[i] = weight[pos[g]].float(), True
    return vec, known, {"gremln_model": str(path),
                        "set_genes_initialised": [str(g) for g, k in zip(genes, known) if k],
                        "set_genes_not_in_gremln_vocab": [str(g) for g, k in zip(genes, known) if not k]}


def embedding_features(vectors: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Embedding rows as feature columns -> float32 [G, d + 1].

    The known rows are centred and scaled to unit column sd (over known rows; left zero when fewer than two
    rows are known), unknown rows zero, then a ``known`` indicator column.

    Parameters
    ----------
    vectors : np.ndarray
        [G, d] embedding rows (e.g. :func:`gremln_vectors`).
    known : np.ndarray
        bool [G], True for rows that hold an embedding.

    Returns
    -------
    np.ndarray
        float32 [G, d + 1]; last column 1.0 for known rows, 0.0 otherwise.
    """
    x = np.zeros((len(known), vectors.shape[1] + 1), np.float32)
    k = np.asarray(known, bool)
    if k.sum() > 1:
        v = np.asarray(vectors, float)[k]
        x[k, :-1] = standardize_columns(v - v.mean(0))
    x[:, -1] = k
    return x


def expression_loadings(x: np.ndarray, measured: np.ndarray, n_components: int = 10, seed: int = 0) -> np.ndarray:
    """Gene loadings of a PCA of cells -> float32 [G, n_components + 1].

    Columns: the loadings (components_.T of ``sklearn.decomposition.PCA``, seeded) scaled by the singular
    values / sqrt(C) (so a gene's row is its embedding, Ahlmann-Eltze et al. 2025), then a ``measured``
    indicator; unmeasured genes are zero except that column. With k = min(n_components, C - 1, M) < n_components
    components, the remaining loading columns are zero.

    Parameters
    ----------
    x : np.ndarray
        float [C, M] log-normalised expression of training cells over the M measured genes.
    measured : np.ndarray
        bool [G] (M True) placing the measured genes in the universe.
    n_components : int
        Number of loading columns.
    seed : int
        ``random_state`` of the PCA.

    Returns
    -------
    np.ndarray
        float32 [G, n_components + 1].
    """
    from sklearn.decomposition import PCA

    k = int(min(n_components, x.shape[0] - 1, x.shape[1]))
    pca = PCA(k, random_state=seed).fit(x)
    out = np.zeros((len(measured), n_components + 1), np.float32)
    out[measured, :k] = (pca.components_.T * pca.singular_values_ / np.sqrt(x.shape[0])).astype(np.float32)
    out[:, -1] = measured
    return out


def standardize_columns(x: np.ndarray) -> np.ndarray:
    """Columns scaled to unit standard deviation (constant columns left as they are); float [G, F].

    Columns are not centred; the standard deviation is the population one (ddof=0).

    Parameters
    ----------
    x : np.ndarray
        float [G, F].

    Returns
    -------
    np.ndarray
        [G, F], each column divided by its standard deviation.
    """
    sd = x.std(0)
    return x / np.where(sd > 0, sd, 1.0)
