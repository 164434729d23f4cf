"""Token shards as a torch Dataset, and the collate function that builds model batches.

A shard (``results/tokens/{split}.npz``, docs/design.md section 5) stores the tokens of its cells in
CSR style: cell ``i`` owns the gene tokens ``gene_ptr[i]:gene_ptr[i+1]`` and the edges
``edge_ptr[i]:edge_ptr[i+1]`` (local token positions, both directions of every undirected edge).

:class:`TokenDataset` yields one cell per item; :func:`collate` pads a list of items into the batch dict
of design.md section 5: a ``<cls>`` token at position 0, padding at the end, and the dense symmetric
normalised Laplacian ``L = I - D^-1/2 A D^-1/2`` of each cell's subgraph over its gene tokens (same
semantics as :func:`cellgraph.graphs.spectral.normalized_laplacian`: rows of isolated nodes and of padding are
zero, the scipy ``csgraph.laplacian(normed=True)`` convention).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError

__all__ = [
    "PAD_TOKEN",
    "CLS_TOKEN",
    "PAD_ID",
    "CLS_ID",
    "SHARD_KEYS",
    "bin_special_ids",
    "read_vocab",
    "TokenDataset",
    "collate",
    "dense_laplacian",
]

#: Gene-token vocabulary: id 0 is padding, id 1 the cell (CLS) token, genes from 2 (vocab.tsv).
PAD_TOKEN, CLS_TOKEN = "<pad>", "<cls>"
PAD_ID, CLS_ID = 0, 1

#: Keys of a token shard (design.md section 5).
SHARD_KEYS = (
    "obs_names", "cell_type", "split", "gene_ptr", "gene_ids", "bins", "expr",
    "edge_ptr", "edge_index", "edge_weight", "n_bins", "max_seq_len",
)


def bin_special_ids(n_bins: int) -> dict[str, int]:
    """Ids of the special values of the bin vocabulary (design.md section 5).

    Bins ``0..n_bins`` are expression bins (0 = not expressed); then ``MASK = n_bins + 1``,
    ``PAD = n_bins + 2``, ``CLS = n_bins + 3``; ``size = n_bins + 4``.

    Parameters
    ----------
    n_bins : int
        The shard's ``n_bins``: the highest expression bin (bins are ``0..n_bins``); at least 2.

    Returns
    -------
    dict[str, int]
        ``MASK``, ``PAD``, ``CLS`` (bin ids) and ``size`` (the bin vocabulary size).

    Raises
    ------
    ValueError
        If ``n_bins < 2``.
    """
    n_bins = int(n_bins)
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    return {"MASK": n_bins + 1, "PAD": n_bins + 2, "CLS": n_bins + 3, "size": n_bins + 4}


def read_vocab(path: str | os.PathLike) -> list[str]:
    """Read ``vocab.tsv`` (``token_id, gene``) into a list whose index is the token id.

    Parameters
    ----------
    path : str or os.PathLike
        The tab-separated vocabulary written by the tokenizer: header ``token_id<TAB>gene``, one token a line.

    Returns
    -------
    list[str]: ``["<pad>", "<cls>", gene_2, gene_3, ...]``.

    Raises
    ------
    InputError
        If the file is missing, lacks the header ``token_id<TAB>gene``, the ids are not ``0..V-1`` in
        order, ids 0/1 are not ``<pad>``/``<cls>``, or a gene appears twice.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"vocab: file not found: {p}")
    lines = p.read_text().splitlines()
    if not lines or lines[0].split("\t") != ["token_id", "gene"]:
        raise InputError(f"{p}: line 1: expected the header 'token_id<TAB>gene'")
    vocab: list[str] = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 2 or fields[0] != str(len(vocab)) or not fields[1]:
            raise InputError(f"{p}: line {lineno}: expected '{len(vocab)}<TAB>gene', got {line!r}")
        vocab.append(fields[1])
    if vocab[:2] != [PAD_TOKEN, CLS_TOKEN]:
        raise InputError(f"{p}: token ids 0 and 1 must be {PAD_TOKEN} and {CLS_TOKEN}")
    if len(set(vocab)) != len(vocab):
        raise InputError(f"{p}: a gene appears twice")
    return vocab


class TokenDataset(Dataset):
    """One cell per item from a token shard (``.npz``, design.md section 5), all held in memory.

    Item ``i`` is a dict of numpy arrays: ``gene_ids`` int32 [n_i], ``bins`` int16 [n_i], ``expr`` float32
    [n_i], ``edge_index`` int32 [2, e_i] (local positions), ``edge_weight`` float32 [e_i], and the ints
    ``cell_index`` (= i) and ``n_bins``. Attributes: ``obs_names``, ``cell_type``, ``split`` (str [C]),
    ``n_bins``, ``max_seq_len``, ``arrays`` (the shard dict).

    Raises
    ------
    InputError
        If the file is missing or a shard key is missing or inconsistent.
    """

    def __init__(self, npz_path: str | os.PathLike | None = None, *, _arrays: Mapping[str, Any] | None = None):
        if _arrays is None:
            p = Path(npz_path)
            if not p.is_file():
                raise InputError(f"token shard: file not found: {p}")
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            where = str(p)
        else:
            arrays, where = dict(_arrays), "token arrays"
        missing = [k for k in SHARD_KEYS if k not in arrays]
        if missing:
            raise InputError(f"{where}: missing shard keys {missing}")
        self.arrays = arrays
        self.gene_ptr = np.asarray(arrays["gene_ptr"], dtype=np.int64)
        self.edge_ptr = np.asarray(arrays["edge_ptr"], dtype=np.int64)
        self.gene_ids = np.asarray(arrays["gene_ids"])
        self.bins = np.asarray(arrays["bins"])
        self.expr = np.asarray(arrays["expr"])
        self.edge_index = np.asarray(arrays["edge_index"]).reshape(2, -1)
        self.edge_weight = np.asarray(arrays["edge_weight"])
        self.obs_names = np.asarray(arrays["obs_names"]).astype(str)
        self.cell_type = np.asarray(arrays["cell_type"]).astype(str)
        self.split = np.asarray(arrays["split"]).astype(str)
        self.n_bins = int(arrays["n_bins"])
        self.max_seq_len = int(arrays["max_seq_len"])
        c = self.obs_names.shape[0]
        ok = (
            self.gene_ptr.shape == (c + 1,) and self.edge_ptr.shape == (c + 1,)
            and self.gene_ptr[0] == 0 and self.edge_ptr[0] == 0
            and self.gene_ptr[-1] == self.gene_ids.shape[0] == self.bins.shape[0] == self.expr.shape[0]
            and self.edge_ptr[-1] == self.edge_index.shape[1] == self.edge_weight.shape[0]
            and self.cell_type.shape[0] == c and self.split.shape[0] == c
        )
        if not ok:
            raise InputError(f"{where}: shard arrays have inconsistent lengths (gene_ptr/edge_ptr vs data)")

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> "TokenDataset":
        """Wrap a dict of shard arrays (as returned by :func:`cellgraph.pp.tokenize.tokenize_cells`)."""
        return cls(_arrays=arrays)

    @classmethod
    def concat(cls, datasets: Sequence["TokenDataset"]) -> "TokenDataset":
        """One dataset holding the cells of ``datasets`` in order (e.g. train cells then a pretraining corpus).

        Cell ``i`` of the result is a cell of exactly one input, so per-cell seeds (masks) stay distinct.
        Raises ValueError if ``datasets`` is empty or the shards differ in ``n_bins`` or ``max_seq_len``.
        """
        if not datasets:
            raise ValueError("concat needs at least one dataset")
        if len({(d.n_bins, d.max_seq_len) for d in datasets}) != 1:
            raise ValueError("datasets differ in n_bins or max_seq_len")
        arrays: dict[str, Any] = {"n_bins": datasets[0].arrays["n_bins"],
                                  "max_seq_len": datasets[0].arrays["max_seq_len"]}
        for k in ("obs_names", "cell_type", "split", "gene_ids", "bins", "expr", "edge_weight"):
            arrays[k] = np.concatenate([np.asarray(d.arrays[k]) for d in datasets])
        arrays["edge_index"] = np.concatenate([d.edge_index for d in datasets], axis=1)
        for ptr in ("gene_ptr", "edge_ptr"):
            parts, offset = [np.zeros(1, dtype=np.int64)], 0
            for d in datasets:
                x = getattr(d, ptr)
                parts.append(x[1:] + offset)
                offset += int(x[-1])
            arrays[ptr] = np.concatenate(parts)
        return cls(_arrays=arrays)

    def __len__(self) -> int:
        return int(self.obs_names.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"cell index {i} out of range for {len(self)} cells")
        g0, g1 = self.gene_ptr[i], self.gene_ptr[i + 1]
        e0, e1 = self.edge_ptr[i], self.edge_ptr[i + 1]
        return {
            "gene_ids": self.gene_ids[g0:g1],
            "bins": self.bins[g0:g1],
            "expr": self.expr[g0:g1],
            "edge_index": self.edge_index[:, e0:e1],
            "edge_weight": self.edge_weight[e0:e1],
            "cell_index": i,
            "n_bins": self.n_bins,
        }


def dense_laplacian(
    batch: np.ndarray, src: np.ndarray, dst: np.ndarray, num_nodes: np.ndarray, n: int,
    edge_weight: np.ndarray | None = None,
) -> torch.Tensor:
    """Batched dense symmetric normalised Laplacians ``I - D^-1/2 A D^-1/2``, zero-padded to ``n``.

    Same semantics as :func:`cellgraph.graphs.spectral.normalized_laplacian` per batch element: weights of a
    repeated (source, target) pair are summed, then ``A = max(A, A^T)``; self-loops are ignored; rows and
    columns of isolated nodes are zero (scipy ``csgraph.laplacian(normed=True)``). Built from the edge
    list in numpy (no dense elementwise passes), so it costs O(E) plus one zero-filled allocation.

    Parameters
    ----------
    batch, src, dst : int arrays [E]
        Batch element and node positions of each edge.
    num_nodes : int array [B]
        Nodes per batch element (rows beyond it are padding and stay zero).
    n : int
        Padded size (>= max of ``num_nodes``).
    edge_weight : float array [E], optional
        Non-negative weights; 1 when omitted.

    Returns
    -------
    torch.Tensor Float [B, n, n].
    """
    b = int(np.asarray(num_nodes).shape[0])
    lap = np.zeros((b, n, n), dtype=np.float32)
    keep = src != dst
    bi, i, j = (np.asarray(x, dtype=np.int64)[keep] for x in (batch, src, dst))
    w = np.ones(bi.shape[0]) if edge_weight is None else np.asarray(edge_weight, dtype=np.float64)[keep]
    if bi.size:
        # sum repeated directed entries (scipy coo -> csr), then the max over the two directions
        directed, inv = np.unique((bi * n + i) * n + j, return_inverse=True)
        wd = np.bincount(inv.ravel(), weights=w)
        bd, id_, jd = directed // (n * n), (directed // n) % n, directed % n
        und = (bd * n + np.minimum(id_, jd)) * n + np.maximum(id_, jd)
        order = np.lexsort((wd, und))
        und, wd = und[order], wd[order]
        last = np.r_[und[1:] != und[:-1], True]
        und, wu = und[last], wd[last]
        bu, a, c = und // (n * n), (und // n) % n, und % n
        deg = np.bincount(bu * n + a, weights=wu, minlength=b * n)
        deg += np.bincount(bu * n + c, weights=wu, minlength=b * n)
        has = deg > 0
        dinv = np.zeros_like(deg)
        dinv[has] = 1.0 / np.sqrt(deg[has])
        val = -wu * dinv[bu * n + a] * dinv[bu * n + c]
        lap[bu, a, c] = val
        lap[bu, c, a] = val
        flat = np.flatnonzero(has)
        lap[flat // n, flat % n, flat % n] = 1.0
    return torch.from_numpy(lap)


def collate(items: Sequence[Mapping[str, Any]], weighted: bool = False) -> dict[str, torch.Tensor]:
    """Pad a list of :class:`TokenDataset` items into the batch dict of design.md section 5.

    Parameters
    ----------
    items : sequence of dict
        ``B`` items of :class:`TokenDataset` (``gene_ids``, ``bins``, ``expr``, ``edge_index`` [2, e_i] local
        positions, ``edge_weight``, ``cell_index``, ``n_bins``).
    weighted : bool
        Build the Laplacians from ``edge_weight`` instead of unit weights (default False).

    Returns
    -------
    dict[str, torch.Tensor]
        With ``n`` the longest gene sequence in the batch:

        - ``gene_ids`` Long [B, 1+n]: position 0 = ``<cls>`` (id 1), padding id 0;
        - ``bins`` Long [B, 1+n]: position 0 = CLS bin ``n_bins+3``, padding = PAD bin ``n_bins+2``;
        - ``attention_mask`` Bool [B, 1+n]: True for real tokens, CLS included;
        - ``laplacian`` Float [B, n, n]: dense normalised Laplacian of each cell's subgraph over its gene
          tokens (no CLS), unweighted unless ``weighted=True`` (then ``edge_weight``, e.g. mutual
          information), padding and isolated-node rows/columns zero;
        - ``expr`` Float [B, n] (0 at padding); ``cell_index`` Long [B].

    Raises
    ------
    ValueError
        If ``items`` is empty or mixes shards with different ``n_bins``.
    """
    if len(items) == 0:
        raise ValueError("collate needs at least one item")
    n_bins = {int(it["n_bins"]) for it in items}
    if len(n_bins) != 1:
        raise ValueError(f"items mix different n_bins {sorted(n_bins)}")
    special = bin_special_ids(n_bins.pop())
    b = len(items)
    lengths = np.fromiter((len(it["gene_ids"]) for it in items), dtype=np.int64, count=b)
    n = int(lengths.max())
    gene_ids = np.full((b, 1 + n), PAD_ID, dtype=np.int64)
    bins = np.full((b, 1 + n), special["PAD"], dtype=np.int64)
    expr = np.zeros((b, n), dtype=np.float32)
    gene_ids[:, 0] = CLS_ID
    bins[:, 0] = special["CLS"]
    for r, it in enumerate(items):
        m = lengths[r]
        gene_ids[r, 1 : 1 + m] = it["gene_ids"]
        bins[r, 1 : 1 + m] = it["bins"]
        expr[r, :m] = it["expr"]
    n_edges = [it["edge_index"].shape[1] for it in items]
    ei = np.concatenate([np.asarray(it["edge_index"], dtype=np.int64).reshape(2, -1) for it in items], axis=1)
    batch_of_edge = np.repeat(np.arange(b, dtype=np.int64), n_edges)
    ew = np.concatenate([np.asarray(it["edge_weight"], dtype=np.float64) for it in items]) if weighted else None
    lens_t = torch.from_numpy(lengths)
    return {
        "gene_ids": torch.from_numpy(gene_ids),
        "bins": torch.from_numpy(bins),
        "attention_mask": torch.arange(1 + n)[None, :] < (lens_t[:, None] + 1),
        "laplacian": dense_laplacian(batch_of_edge, ei[0], ei[1], lengths, n, ew),
        "expr": torch.from_numpy(expr),
        "cell_index": torch.tensor([int(it["cell_index"]) for it in items], dtype=torch.int64),
    }
