r"""Cell graph transformers: y = f(G, S) for a wild-type gene multigraph G and a set S of perturbed genes.

Two models share one encoder (nanoGPT/DiT style: a dataclass config, small modules, shape comments):

- **Shared encoder** ``F(G)``: per gene of the universe (N genes) a learned embedding row
  (``gene_identity``) and/or a learned projection of fixed gene features (``n_features``; e.g. random-walk
  features of the full multigraph, so a gene never seen perturbed still has a representation), and a CLS
  token; L pre-LayerNorm transformer blocks over the N + 1 tokens. There is no per-sample input, so the wild-type
  cell is encoded once per training step, independently of the batch size B: f(G, S) = g(F(G), S).
- **Graph-regularised attention.** Each graph k of ``config.graph_reg`` is assigned to a (layer l_k, head
  h_k, weight lambda_k). Its loss is

  .. math:: \mathcal{L}_k = \lambda_k \, \frac{1}{|R_k|} \sum_{i \in R_k}
            \mathrm{KL}\big(\tilde A_k[i,:] \,\|\, \alpha_{l_k h_k}[i,:]\big),

  with :math:`\tilde A_k` the row-normalised (weighted) adjacency over genes, :math:`\alpha` the softmax
  attention row over all N + 1 tokens (the CLS column has zero target mass), and :math:`R_k` a uniform
  sample (without replacement) of ``ceil(row_sample_rate * n_k)`` of the n_k rows of positive degree. The
  normaliser is |R_k|, the number of sampled rows; lambda_k is applied exactly once, here, and the training
  loss adds the sum over k unchanged. (The public torchcell code, as read, applies its weight both in the
  model and in the loss and divides by an edge count that evaluates to 2 per graph.) The attention output
  itself comes from ``torch.nn.functional.scaled_dot_product_attention``; softmax rows are computed only for
  the sampled rows, so no [heads, N, N] map is ever materialised (unless ``materialize_attention=True``,
  the benchmark's comparison variant).
- :class:`CellGraphTransformer` (non-equivariant): H[S] is collapsed at once by ``config.head``:
  ``mean`` pool; ``cross_attention`` from the pooled query to all genes (zero for an empty S);
  ``hypersagnn`` (Zhang et al. 2020, *Hyper-SAGNN*, ICLR: masked self-attention "dynamic" minus
  position-wise "static" embeddings, squared, mean-pooled). ``MLP([h_CLS || z_S])`` gives the scalar tasks.
- :class:`EquivariantCellGraphTransformer`: Type I transform (all genes attend to the embeddings of their
  sample's perturbed genes, perturbation-type embeddings added to the keys and the values (the values'
  type term is an effect shared by all genes of that type); with ``set_gate`` an "in S" embedding on the
  perturbed genes' own rows and a null key with zero value, so single-gene sets are not inert; residual +
  LayerNorm, FFN, residual + LayerNorm) batched over samples with padding masks, giving H_pert [B, N, d];
  Type II readouts: fitness = MLP(mean over genes), interaction = MLP([h_CLS || mean over S of H_pert]),
  expression = per-gene offsets (``expression_offset``, and ``own_offset`` at the perturbed genes) plus a
  per-gene MLP whose last layer starts at zero [B, N], gene set = MLP(mean over a configured gene set) [B, m]. Permuting the genes permutes
  H_pert and the expression readout the same way and leaves the others unchanged.

Batches (PyG-style pointer arrays for variable-size S): ``pert_ptr`` Long [B+1], ``pert_idx`` Long [P]
(gene indices 0..N-1, sample b owns ``pert_idx[pert_ptr[b]:pert_ptr[b+1]]``), ``pert_type`` Long [P]
(index into :data:`PERTURBATION_TYPES`). Labels ``y_<task>`` and masks ``m_<task>`` (bool, True = labelled):
scalar tasks [B]; ``expression`` [B, N] (mask False for unmeasured genes); ``gene_set`` [B, m].
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PERTURBATION_TYPES", "CGTConfig", "preset", "SharedEncoder", "CellGraphTransformer",
           "EquivariantCellGraphTransformer", "multitask_loss", "row_normalized_csr", "sampled_rows_kl",
           "full_attention_kl", "segment_ids", "build_model", "load", "attention_diagnostics"]

PERTURBATION_TYPES = ("deletion", "knockdown", "overexpression")  # deletion = knockout
SCALAR_TASKS = ("fitness", "interaction")


@dataclass
class CGTConfig:
    """Hyper-parameters. ``graph_reg``: graph name -> [layer, head, lambda]."""

    n_genes: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    ffn_mult: int = 2
    dropout: float = 0.0
    head: str = "cross_attention"  # non-equivariant perturbation head: mean | cross_attention | hypersagnn
    graph_reg: dict = field(default_factory=dict)
    row_sample_rate: float = 0.1
    n_gene_set: int = 0  # m outputs of the gene-set readout (0 = none)
    task_weights: dict = field(default_factory=lambda: {"fitness": 1.0, "interaction": 1.0, "expression": 1.0,
                                                        "gene_set": 1.0})
    materialize_attention: bool = False  # benchmark variant: full [heads, N+1, N+1] maps
    n_features: int = 0  # F columns of fixed gene features (buffer ``encoder.gene_features`` [N, F]; 0 = none)
    gene_identity: bool = True  # a learned embedding row per gene (off: genes are known by their features only)
    set_gate: bool = True  # Type I: learned "in S" embedding on the perturbed genes' rows and a null key
    checkpoint: bool = False  # recompute the [B, N, d] Type I activations in backward (torch.utils.checkpoint)

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        if self.head not in ("mean", "cross_attention", "hypersagnn"):
            raise ValueError(f"head must be mean, cross_attention or hypersagnn, not {self.head!r}")
        if not self.gene_identity and self.n_features < 1:
            raise ValueError("gene_identity=False needs n_features >= 1 (genes would have no representation)")
        for g, (layer, h, lam) in self.graph_reg.items():
            if not (0 <= int(layer) < self.n_layers and 0 <= int(h) < self.n_heads) or float(lam) < 0:
                raise ValueError(f"graph_reg[{g!r}] = {[layer, h, lam]}: layer/head out of range or lambda < 0")


PRESETS = {
    "demo": dict(d_model=32, n_layers=2, n_heads=4, ffn_mult=2, row_sample_rate=0.25),
    "paper": dict(d_model=96, n_layers=8, n_heads=12, ffn_mult=4, row_sample_rate=0.1),
}


def preset(name: str, n_genes: int, **overrides) -> CGTConfig:
    """``CGTConfig`` of preset ``demo`` (2 layers, d 32) or ``paper`` (8 layers, d 96, 12 heads).

    Parameters
    ----------
    name : str
        Preset name, ``demo`` or ``paper``.
    n_genes : int
        N, the number of genes of the universe.
    **overrides
        ``CGTConfig`` fields that replace the preset's values.

    Returns
    -------
    CGTConfig
        The configuration.

    Raises
    ------
    ValueError
        When ``name`` is not a preset (and from ``CGTConfig`` when an override is invalid).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return CGTConfig(n_genes=n_genes, **{**PRESETS[name], **overrides})


# --------------------------------------------------------------------------------------------------
# Graph regularisation helpers
# --------------------------------------------------------------------------------------------------


def row_normalized_csr(edge_index: torch.Tensor, edge_weight: torch.Tensor | None, n: int, directed: bool):
    """Row-normalised adjacency A~ (rows sum to 1) as COO sorted by row.

    Undirected graphs are given once and mirrored here. Self-loops and duplicates are dropped (duplicates:
    weights summed by ``coalesce``); edge weights enter as absolute values, and edges of weight 0 are dropped.

    Parameters
    ----------
    edge_index : torch.Tensor
        Long [2, E] (row = attending gene i, col = attended gene j, genes 0..n-1).
    edge_weight : torch.Tensor or None
        Float [E] edge weights (sign ignored); None for weight 1 on every edge.
    n : int
        Number of genes.
    directed : bool
        False to mirror every edge (mirrored pairs keep the larger weight).

    Returns
    -------
    tuple of torch.Tensor
        ``(row Long [E'], col Long [E'], val Float [E'], pos_rows Long [n_pos])``, ``pos_rows`` the rows of
        positive degree.
    """
    from torch_geometric.utils import coalesce, remove_self_loops, to_undirected

    ei = edge_index.long()  # [2, E]
    # |w|: a repressive (negative) regulatory edge is an edge all the same; its sign reaches the models through
    # the gene features (cellgraph.graphs.gene_features), not through the attention target
    w = torch.ones(ei.shape[1], device=ei.device) if edge_weight is None else edge_weight.float().abs()  # [E]
    ei, w = remove_self_loops(ei, w)
    if not directed:
        ei, w = to_undirected(ei, w, num_nodes=n, reduce="max")  # [2, E'] both directions
    ei, w = coalesce(ei, w, num_nodes=n)  # sorted by row
    keep = w > 0
    ei, w = ei[:, keep], w[keep]
    rowsum = torch.zeros(n, device=w.device).index_add_(0, ei[0], w)  # [n]
    val = w / rowsum[ei[0]]  # [E']
    pos_rows = torch.nonzero(rowsum > 0).flatten()  # [n_pos]
    return ei[0], ei[1], val, pos_rows


def sampled_rows_kl(log_alpha_rows: torch.Tensor, rows: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                    val: torch.Tensor, n_genes: int) -> torch.Tensor:
    """Mean over sampled rows of KL(A~[i,:] || alpha[i,:]).

    KL = sum_j p_ij (log p_ij - log alpha_ij) over the edges of row i.

    Parameters
    ----------
    log_alpha_rows : torch.Tensor
        Float [R, N+1], log-softmax attention rows of the sampled genes (token 0 = CLS, gene j = token j+1).
    rows : torch.Tensor
        Long [R], the sampled genes.
    row, col, val : torch.Tensor
        Row-normalised adjacency over genes, Long [E], Long [E], Float [E] (:func:`row_normalized_csr`).
    n_genes : int
        N, the number of genes.

    Returns
    -------
    torch.Tensor
        Scalar (nats): the sum over sampled rows divided by R.
    """
    slot = torch.full((n_genes,), -1, dtype=torch.long, device=rows.device)  # [N] position among sampled rows
    slot[rows] = torch.arange(rows.numel(), device=rows.device)
    e_slot = slot[row]  # [E]
    sel = e_slot >= 0  # [E] edges of sampled rows
    p = val[sel]  # [E_s]
    la = log_alpha_rows[e_slot[sel], col[sel] + 1]  # [E_s]
    return (p * (p.log() - la)).sum() / rows.numel()  # scalar


def full_attention_kl(alpha: torch.Tensor, rows: torch.Tensor, row, col, val) -> torch.Tensor:
    """Reference for tests: the same KL read off a full attention map alpha Float [N+1, N+1] (one head).

    Parameters
    ----------
    alpha : torch.Tensor
        Float [N+1, N+1] softmax attention map (token 0 = CLS, gene j = token j+1).
    rows : torch.Tensor
        Long [R], the sampled genes.
    row, col, val
        Row-normalised adjacency over genes (:func:`row_normalized_csr`).

    Returns
    -------
    torch.Tensor
        Scalar (nats), as :func:`sampled_rows_kl`.
    """
    n = alpha.shape[0] - 1
    target = torch.zeros(n, n + 1)  # [N, N+1] A~ with a zero CLS column
    target[row, col + 1] = val
    t = target[rows]  # [R, N+1]
    a = alpha[rows + 1]  # [R, N+1]
    return torch.where(t > 0, t * (t.log() - a.log()), torch.zeros(())).sum() / rows.numel()


def segment_ids(ptr: torch.Tensor) -> torch.Tensor:
    """Sample index of every entry of a pointer array: ptr Long [B+1] -> Long [ptr[-1]].

    Parameters
    ----------
    ptr : torch.Tensor
        Long [B+1] pointer array (sample b owns entries ptr[b]:ptr[b+1]).

    Returns
    -------
    torch.Tensor
        Long [ptr[-1]], the sample index b of each entry.
    """
    return torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=ptr.device), ptr.diff())


def _segment_mean(x: torch.Tensor, seg: torch.Tensor, n_seg: int) -> torch.Tensor:
    """Mean of rows x [P, d] per segment id seg [P] -> [n_seg, d]; empty segments give exactly 0
    (``torch_geometric.utils.scatter(..., reduce="mean")``)."""
    from torch_geometric.utils import scatter

    return scatter(x, seg, dim=0, dim_size=n_seg, reduce="mean")  # [B, d]


def _dense_sets(x: torch.Tensor, ptr: torch.Tensor):
    """Pad per-sample sets: x [P, d] with ptr [B+1] -> (X [B, S, d] zero-padded, mask Bool [B, S])."""
    from torch_geometric.utils import to_dense_batch

    b = ptr.numel() - 1
    seg = segment_ids(ptr)  # [P]
    smax = max(int(ptr.diff().max()) if b else 0, 1)
    xd, mask = to_dense_batch(x, seg, batch_size=b, max_num_nodes=smax)  # [B, S, d], [B, S]
    return xd, mask


# --------------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------------


class MLP(nn.Sequential):
    """Two-layer perceptron: Linear(d_in, d_hidden) -> GELU -> Dropout -> Linear(d_hidden, d_out);
    [..., d_in] -> [..., d_out].
    """
    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0):
        super().__init__(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out))


class RegularisedSelfAttention(nn.Module):
    """Multi-head self-attention over the N + 1 tokens with sampled-row KL regularisation of chosen heads."""

    def __init__(self, cfg: CGTConfig):
        super().__init__()
        self.h, self.dh = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout
        self.materialize = cfg.materialize_attention

    def forward(self, x: torch.Tensor, reg: list) -> tuple[torch.Tensor, list]:
        """x [T=N+1, d]; reg: list of (head, rows Long [R]) -> (out [T, d], list of log-alpha rows [R, T])."""
        t, d = x.shape
        q, k, v = self.qkv(x).view(t, 3, self.h, self.dh).permute(1, 2, 0, 3)  # each [H, T, dh]
        drop = self.dropout if self.training else 0.0
        if self.materialize:
            att = (q @ k.transpose(-1, -2) / math.sqrt(self.dh)).log_softmax(-1)  # [H, T, T]
            y = F.dropout(att.exp(), drop, self.training) @ v  # [H, T, dh]
            rows_out = [att[hd, rows + 1] for hd, rows in reg]  # each [R, T]
        else:
            # 4-D input selects the fused CPU flash kernel (3-D falls back to the math path, which materialises
            # the [H, T, T] map)
            y = F.scaled_dot_product_attention(q[None], k[None], v[None], dropout_p=drop)[0]  # [H, T, dh]
            rows_out = [
                (q[hd, rows + 1] @ k[hd].T / math.sqrt(self.dh)).log_softmax(-1)  # [R, T]
                for hd, rows in reg
            ]
        y = y.transpose(0, 1).reshape(t, d)  # [T, d]
        return self.proj(y), rows_out  # [T, d]


class Block(nn.Module):
    """Pre-LayerNorm transformer block over the N + 1 tokens of the shared encoder: x + Attn(LN(x)), then
    x + MLP(LN(x)) (MLP width ``ffn_mult * d_model``), with :class:`RegularisedSelfAttention`.
    """
    def __init__(self, cfg: CGTConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = RegularisedSelfAttention(cfg)
        self.mlp = MLP(cfg.d_model, cfg.ffn_mult * cfg.d_model, cfg.d_model, cfg.dropout)

    def forward(self, x: torch.Tensor, reg: list):
        """x [T=N+1, d]; reg: list of (head, rows Long [R]) -> (x [T, d], list of log-alpha rows [R, T] of the
        regularised heads, as returned by :class:`RegularisedSelfAttention`).
        """
        a, rows = self.attn(self.ln1(x), reg)  # [T, d]
        x = x + a  # [T, d]
        x = x + self.mlp(self.ln2(x))  # [T, d]
        return x, rows


class SharedEncoder(nn.Module):
    """F(G): gene embeddings [N, d] + CLS -> L blocks -> H [N+1, d] (row 0 = CLS), once per step.

    Graphs for the regularisation are attached with :meth:`set_graphs`; :meth:`forward` returns
    ``(H [N+1, d], reg_loss scalar = sum_k lambda_k * mean-KL_k, per-graph KL dict)``.
    """

    def __init__(self, cfg: CGTConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.gene_identity:
            self.gene_emb = nn.Embedding(cfg.n_genes, cfg.d_model)  # [N, d]
            nn.init.normal_(self.gene_emb.weight, std=0.02)
        if cfg.n_features:
            self.register_buffer("gene_features", torch.zeros(cfg.n_genes, cfg.n_features))  # [N, F]
            self.feature_proj = nn.Linear(cfg.n_features, cfg.d_model)  # one projection for seen and unseen genes
        self.cls = nn.Parameter(torch.zeros(1, cfg.d_model))  # [1, d]
        nn.init.normal_(self.cls, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.graph_names: list[str] = []

    def set_features(self, features: torch.Tensor) -> None:
        """Fixed gene features Float [N, F] (F = ``cfg.n_features``), e.g.
        :func:`cellgraph.graphs.gene_features.random_walk_features`. Raises ValueError on a shape mismatch."""
        want = (self.cfg.n_genes, self.cfg.n_features)
        if tuple(features.shape) != want:
            raise ValueError(f"gene features must be {list(want)}, got {list(features.shape)}")
        self.gene_features.copy_(torch.as_tensor(features, dtype=torch.float32))

    def gene_tokens(self) -> torch.Tensor:
        """Input rows of the genes [N, d]: projected fixed features plus, with ``gene_identity``, learned rows."""
        x = 0
        if self.cfg.n_features:
            x = self.feature_proj(self.gene_features)  # [N, d]
        if self.cfg.gene_identity:
            x = x + self.gene_emb.weight  # [N, d]
        return x

    def set_graphs(self, graphs: dict) -> None:
        """graphs: name -> (edge_index Long [2, E] over genes 0..N-1, edge_weight Float [E] or None, directed).

        Only the graphs named in ``cfg.graph_reg`` are kept (as buffers, so they travel in the state dict).
        """
        self.graph_names = []
        for name in self.cfg.graph_reg:
            if name not in graphs:
                raise KeyError(f"graph_reg names graph {name!r} but no such graph was given ({sorted(graphs)})")
            row, col, val, pos = row_normalized_csr(*graphs[name][:2], self.cfg.n_genes, graphs[name][2])
            if pos.numel() == 0:
                continue  # no edges among these genes: nothing to regularise
            for key, t in zip(("row", "col", "val", "pos"), (row, col, val, pos)):
                self.register_buffer(f"reg_{name}_{key}", t, persistent=True)
            self.graph_names.append(name)

    def sample_rows(self, name: str, generator: torch.Generator | None = None) -> torch.Tensor:
        """Rows R_k: ceil(rate * n_pos) positive-degree rows of graph ``name``, uniformly without replacement."""
        pos = getattr(self, f"reg_{name}_pos")  # [n_pos]
        r = max(1, math.ceil(self.cfg.row_sample_rate * pos.numel()))
        perm = torch.randperm(pos.numel(), generator=generator)[:r].to(pos.device)
        return pos[perm].sort().values  # [R]

    def forward(self, rows: dict | None = None):
        """rows: optional graph -> sampled rows Long [R] (default: drawn with :meth:`sample_rows`)."""
        cfg = self.cfg
        rows = dict(rows or {})
        for name in self.graph_names:
            rows.setdefault(name, self.sample_rows(name))
        x = torch.cat([self.cls, self.gene_tokens()], 0)  # [N+1, d]
        kl: dict[str, torch.Tensor] = {}
        reg_loss = x.new_zeros(())
        for li, block in enumerate(self.blocks):
            here = [n for n in self.graph_names if int(cfg.graph_reg[n][0]) == li]
            x, log_rows = block(x, [(int(cfg.graph_reg[n][1]), rows[n]) for n in here])  # [N+1, d]
            for name, la in zip(here, log_rows):
                kl[name] = sampled_rows_kl(la, rows[name], getattr(self, f"reg_{name}_row"),
                                           getattr(self, f"reg_{name}_col"), getattr(self, f"reg_{name}_val"),
                                           cfg.n_genes)
                reg_loss = reg_loss + float(cfg.graph_reg[name][2]) * kl[name]  # lambda_k applied once
        return self.ln_f(x), reg_loss, kl  # [N+1, d], scalar, {graph: scalar}

    @torch.no_grad()
    def attention_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Softmax attention rows of genes ``rows`` Long [R] in every layer and head -> Float [L, H, R, N+1]
        (column 0 = CLS, column j+1 = gene j). Only these R rows are formed, never the [H, N+1, N+1] map."""
        x = torch.cat([self.cls, self.gene_tokens()], 0)  # [N+1, d]
        out = []
        for block in self.blocks:
            attn = block.attn
            t = x.shape[0]
            q, k, _ = attn.qkv(block.ln1(x)).view(t, 3, attn.h, attn.dh).permute(1, 2, 0, 3)  # each [H, T, dh]
            out.append((q[:, rows + 1] @ k.transpose(1, 2) / math.sqrt(attn.dh)).softmax(-1))  # [H, R, T]
            x, _ = block(x, [])  # [T, d]
        return torch.stack(out)  # [L, H, R, T]


def attention_diagnostics(encoder: SharedEncoder, graphs: dict, ks=(8, 32, 128), max_rows: int = 256,
                          seed: int = 0) -> tuple[list[dict], list[dict]]:
    r"""How each attention head of ``encoder`` follows each gene graph (diagnostics).

    Per graph, up to ``max_rows`` rows of positive degree are drawn (seeded); for every (graph, layer, head),
    with :math:`\alpha_i` the head's softmax row of gene i over the N + 1 tokens, :math:`\mathcal N(i)` the
    neighbours of i (out-neighbours for directed graphs, the convention of the regularisation) and the genes
    ranked by :math:`\alpha_{ij}` (CLS excluded), means over the rows of:

    - ``recall_at_degree``: the share of :math:`\mathcal N(i)` among the top-:math:`|\mathcal N(i)|` genes
      (R-precision);
    - ``precision_at_k``: the share of true neighbours among the top min(k, N) genes, k in ``ks``;
    - ``edge_mass``: :math:`\sum_{j \in \mathcal N(i)} \alpha_{ij}`, beside ``uniform_mass`` =
      :math:`|\mathcal N(i)| / (N + 1)`, its value under uniform attention.

    Per (layer, head), over up to ``max_rows`` genes drawn uniformly: ``entropy`` (nats, mean over rows of
    :math:`-\sum_j \alpha_{ij} \log \alpha_{ij}`; uniform attention gives log(N + 1)) and ``effective_rank``
    of the [R, N+1] attention matrix (Roy & Vetterli 2007: exp of the entropy of its normalised singular
    values).

    Parameters
    ----------
    encoder : SharedEncoder
        The encoder whose attention rows are read.
    graphs : dict
        name -> (edge_index Long [2, E], edge_weight or None, directed) over genes 0..N-1, all graphs,
        regularised or not.
    ks : tuple of int
        k of ``precision_at_k``.
    max_rows : int
        Most rows drawn per graph, and for the per-head statistics.
    seed : int
        Seed of the ``torch.Generator`` that draws the rows.

    Returns
    -------
    tuple of list of dict
        (rows per (graph, layer, head): graph, layer, head, regularised, rows, mean_degree, recall_at_degree,
        precision_at_<k>, edge_mass, uniform_mass; rows per (layer, head): layer, head, rows, entropy,
        uniform_entropy, effective_rank).
    """
    cfg = encoder.cfg
    n = cfg.n_genes
    gen = torch.Generator().manual_seed(seed)
    graph_rows = []
    regularised = {(g, int(v[0]), int(v[1])) for g, v in cfg.graph_reg.items() if float(v[2]) > 0}
    for name in sorted(graphs):
        ei, w, directed = graphs[name][:3]
        row, col, _, pos = row_normalized_csr(ei, w, n, directed)
        if pos.numel() == 0:
            continue
        rows = pos[torch.randperm(pos.numel(), generator=gen)[:max_rows]].sort().values  # [R]
        slot = torch.full((n,), -1, dtype=torch.long)
        slot[rows] = torch.arange(rows.numel())
        sel = slot[row] >= 0
        nbr = torch.zeros(rows.numel(), n, dtype=torch.bool)  # [R, N]
        nbr[slot[row[sel]], col[sel]] = True
        deg = nbr.sum(1)  # [R]
        att = encoder.attention_rows(rows)  # [L, H, R, N+1]
        for li in range(att.shape[0]):  # one layer at a time: [H, R, N] index arrays
            genes_att = att[li, ..., 1:]  # [H, R, N]
            order = genes_att.argsort(-1, descending=True)  # [H, R, N]
            hit = torch.gather(nbr.expand_as(order), -1, order).float().cumsum(-1)  # [H, R, N] hits in top-m
            idx = (deg - 1).clamp_min(0).expand(hit.shape[0], -1)[..., None]  # [H, R, 1]
            r_at_deg = torch.gather(hit, -1, idx)[..., 0] / deg  # [H, R]
            mass = (genes_att * nbr).sum(-1)  # [H, R]
            for hd in range(att.shape[1]):
                rec = {"graph": name, "layer": li, "head": hd, "regularised": (name, li, hd) in regularised,
                       "rows": int(rows.numel()), "mean_degree": float(deg.float().mean()),
                       "recall_at_degree": float(r_at_deg[hd].mean())}
                for k in ks:
                    kk = min(k, n)
                    rec[f"precision_at_{k}"] = float((hit[hd, :, kk - 1] / kk).mean())
                rec["edge_mass"] = float(mass[hd].mean())
                rec["uniform_mass"] = float((deg.float() / (n + 1)).mean())
                graph_rows.append(rec)
    return graph_rows, _head_statistics(encoder, n, max_rows, gen)


def _head_statistics(encoder: SharedEncoder, n: int, max_rows: int, gen: torch.Generator) -> list[dict]:
    """Per (layer, head) of :func:`attention_diagnostics`: entropy and effective rank over up to ``max_rows``
    genes drawn with ``gen`` -> one dict per (layer, head)."""
    head_rows = []
    rows = torch.randperm(n, generator=gen)[:max_rows].sort().values
    att = encoder.attention_rows(rows)  # [L, H, R, N+1]
    ent = -(att * att.clamp_min(1e-30).log()).sum(-1).mean(-1)  # [L, H]
    for li in range(att.shape[0]):
        for hd in range(att.shape[1]):
            sv = torch.linalg.svdvals(att[li, hd].double())  # [min(R, N+1)]
            p_sv = sv / sv.sum()
            erank = float(torch.exp(-(p_sv * p_sv.clamp_min(1e-300).log()).sum()))
            head_rows.append({"layer": li, "head": hd, "rows": int(rows.numel()), "entropy": float(ent[li, hd]),
                              "uniform_entropy": math.log(n + 1), "effective_rank": erank})
    return head_rows


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


class CellGraphTransformer(nn.Module):
    """Non-equivariant model: [h_CLS || z_S] -> MLP -> scalar tasks (fitness, interaction)."""

    def __init__(self, cfg: CGTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.encoder = SharedEncoder(cfg)
        self.type_emb = nn.Embedding(len(PERTURBATION_TYPES), d)  # [3, d]
        nn.init.zeros_(self.type_emb.weight)
        if cfg.head == "cross_attention":
            self.cross = nn.MultiheadAttention(d, cfg.n_heads, batch_first=True)
        elif cfg.head == "hypersagnn":
            self.static = MLP(d, d, d)
            self.dyn = nn.MultiheadAttention(d, cfg.n_heads, batch_first=True)
        self.out = MLP(2 * d, 2 * d, len(SCALAR_TASKS), cfg.dropout)
        nn.init.zeros_(self.out[-1].weight)  # scalar readouts start at 0 (or at a per-sample offset)
        nn.init.zeros_(self.out[-1].bias)

    def collapse(self, genes: torch.Tensor, batch: dict) -> torch.Tensor:
        """genes H [N, d] -> z_S [B, d] (exactly zero for an empty S with ``cross_attention``)."""
        ptr = batch["pert_ptr"]  # [B+1]
        b = ptr.numel() - 1
        hs = genes[batch["pert_idx"]] + self.type_emb(batch["pert_type"])  # [P, d]
        pooled = _segment_mean(hs, segment_ids(ptr), b)  # [B, d]
        has = (ptr.diff() > 0)  # [B]
        if self.cfg.head == "mean":
            return pooled  # [B, d]
        if self.cfg.head == "cross_attention":
            kv = genes.unsqueeze(0).expand(b, -1, -1)  # [B, N, d] (view)
            z, _ = self.cross(pooled.unsqueeze(1), kv, kv, need_weights=False)  # [B, 1, d]
            return z.squeeze(1) * has[:, None]  # [B, d]
        xs, mask = _dense_sets(hs, ptr)  # [B, S, d], [B, S]
        key_pad = ~(mask | ~has[:, None])  # [B, S] empty sets attend to padding; zeroed below
        dyn, _ = self.dyn(xs, xs, xs, key_padding_mask=key_pad, need_weights=False)  # [B, S, d]
        score = (dyn - self.static(xs)).pow(2) * mask[..., None]  # [B, S, d]
        return score.sum(1) / mask.sum(1).clamp_min(1)[:, None]  # [B, d]

    def forward(self, batch: dict, rows: dict | None = None) -> tuple[dict, torch.Tensor, dict]:
        """-> (predictions {task: [B]}, reg_loss scalar, per-graph KL)."""
        h, reg_loss, kl = self.encoder(rows)  # [N+1, d]
        z = self.collapse(h[1:], batch)  # [B, d]
        cls = h[0].expand(z.shape[0], -1)  # [B, d]
        y = self.out(torch.cat([cls, z], -1))  # [B, n_scalar]
        return {t: y[:, i] for i, t in enumerate(SCALAR_TASKS)}, reg_loss, kl


class TypeITransform(nn.Module):
    """All genes attend to their sample's perturbed genes (keys + type embeddings); two residual LayerNorms.

    With ``cfg.set_gate`` (the default) two additions make the transform act on single-gene sets:

    - a learned "in S" embedding is added to the rows of the sample's own perturbed genes before the queries,
      the residual and the readouts, so the model can tell the perturbed gene from the others (its own drop);
    - a learned null key with a zero value joins every sample's keys. With one real key the softmax would
      give every query weight 1 (so W_q, W_k get no gradient); with the null key a gene's weight on the
      perturbed gene is sigmoid(q.(k - k_null) / sqrt(d_h)), a gate on the effect, learned per gene.
    """

    def __init__(self, cfg: CGTConfig):
        super().__init__()
        d = cfg.d_model
        self.h, self.dh = cfg.n_heads, d // cfg.n_heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.type_emb = nn.Embedding(len(PERTURBATION_TYPES), d)  # [3, d]
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = MLP(d, cfg.ffn_mult * d, d, cfg.dropout)
        self.set_gate = cfg.set_gate
        if self.set_gate:
            self.in_set = nn.Parameter(torch.randn(d) * 0.02)  # [d]
            self.null_key = nn.Parameter(torch.zeros(self.h, 1, self.dh))  # [H, 1, dh], value 0

    def in_set_indicator(self, batch: dict, n: int) -> torch.Tensor:
        """Float [B, N]: 1 where gene j is in sample b's set S_b."""
        ptr = batch["pert_ptr"]  # [B+1]
        ind = torch.zeros(ptr.numel() - 1, n, device=ptr.device)
        ind[segment_ids(ptr), batch["pert_idx"]] = 1.0
        return ind

    def forward(self, genes: torch.Tensor, batch: dict) -> torch.Tensor:
        """genes H [N, d] -> H_pert [B, N, d]; empty S -> attention term exactly 0."""
        ptr = batch["pert_ptr"]  # [B+1]
        n, d = genes.shape
        b = ptr.numel() - 1
        hs = genes[batch["pert_idx"]]  # [P, d]
        keys = hs + self.type_emb(batch["pert_type"])  # [P, d]
        if self.set_gate:
            keys = keys + self.in_set  # a perturbed gene as key carries its "in S" mark too
        kd, mask = _dense_sets(keys, ptr)  # [B, S, d], [B, S]
        # values carry the type embedding too: a perturbation type has an effect shared by all its genes,
        # which is what transfers to a gene never perturbed in training
        has = ptr.diff() > 0  # [B]
        s = kd.shape[1]
        x0 = genes.unsqueeze(0).expand(b, -1, -1)  # [B, N, d]
        if self.set_gate:
            x0 = x0 + self.in_set_indicator(batch, n)[..., None] * self.in_set  # [B, N, d]
        q = self.q(x0).view(b, n, self.h, self.dh).transpose(1, 2)  # [B, H, N, dh]
        k = self.k(kd).view(b, s, self.h, self.dh).transpose(1, 2)  # [B, H, S, dh]
        v = self.v(kd).view(b, s, self.h, self.dh).transpose(1, 2)  # [B, H, S, dh]
        allowed = (mask | ~has[:, None])[:, None, None, :]  # [B, 1, 1, S] (empty S: no NaN, zeroed below)
        if self.set_gate:
            k = torch.cat([self.null_key.expand(b, -1, -1, -1), k], 2)  # [B, H, S+1, dh]
            v = torch.cat([v.new_zeros(b, self.h, 1, self.dh), v], 2)  # [B, H, S+1, dh]
            allowed = torch.cat([allowed.new_ones(b, 1, 1, 1), mask[:, None, None, :]], -1)  # [B, 1, 1, S+1]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # [B, H, N, dh]
        a = self.o(a.transpose(1, 2).reshape(b, n, d)) * has[:, None, None]  # [B, N, d]
        x = self.ln1(x0 + a)  # [B, N, d]
        return self.ln2(x + self.ffn(x))  # [B, N, d]


class EquivariantCellGraphTransformer(nn.Module):
    """Shared encoder, Type I transform, Type II readouts (fitness, interaction, expression, gene set)."""

    def __init__(self, cfg: CGTConfig, gene_set: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.encoder = SharedEncoder(cfg)
        self.type1 = TypeITransform(cfg)
        self.fitness = MLP(d, d, 1)
        self.interaction = MLP(2 * d, d, 1)
        nn.init.zeros_(self.interaction[-1].weight)  # starts at 0: at first the model is any per-sample offset
        nn.init.zeros_(self.interaction[-1].bias)
        self.expression = MLP(d, d, 1)  # shared over genes: equivariant
        nn.init.zeros_(self.expression[-1].weight)  # starts at the offset: at first the model *is* the offset
        nn.init.zeros_(self.expression[-1].bias)
        # per-gene offsets of the expression readout [N] (zeros by default): ``expression_offset`` for every
        # sample (e.g. the mean training change), ``own_offset`` added at the sample's own perturbed genes
        # (e.g. the mean own-gene drop of the training targets)
        self.register_buffer("expression_offset", torch.zeros(cfg.n_genes))
        self.register_buffer("own_offset", torch.zeros(cfg.n_genes))
        if cfg.n_gene_set:
            gs = torch.zeros(cfg.n_genes, dtype=torch.bool) if gene_set is None else gene_set.bool()
            self.register_buffer("gene_set_mask", gs)  # [N]
            self.gene_set = MLP(d, d, cfg.n_gene_set)

    def _type1_expression(self, genes: torch.Tensor, batch: dict):
        hp = self.type1(genes, batch)  # [B, N, d]
        expr = self.expression(hp).squeeze(-1) + self.expression_offset  # [B, N]
        own = self.type1.in_set_indicator(batch, genes.shape[0])  # [B, N]
        return hp, expr + own * self.own_offset  # [B, N, d], [B, N]

    def forward(self, batch: dict, rows: dict | None = None) -> tuple[dict, torch.Tensor, dict]:
        """-> (predictions, reg_loss, per-graph KL); predictions: fitness [B], interaction [B],
        expression [B, N], gene_set [B, m] (if configured), and ``h_pert`` [B, N, d]."""
        h, reg_loss, kl = self.encoder(rows)  # [N+1, d]
        if self.cfg.checkpoint and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            hp, expr = checkpoint(self._type1_expression, h[1:], batch, use_reentrant=False)  # [B, N, d], [B, N]
        else:
            hp, expr = self._type1_expression(h[1:], batch)  # [B, N, d], [B, N]
        b = hp.shape[0]
        ptr = batch["pert_ptr"]  # [B+1]
        seg = segment_ids(ptr)  # [P]
        hs = _segment_mean(hp[seg, batch["pert_idx"]], seg, b)  # [B, d] mean over S of H_pert
        out = {
            "fitness": self.fitness(hp.mean(1)).squeeze(-1),  # [B]
            "interaction": self.interaction(torch.cat([h[0].expand(b, -1), hs], -1)).squeeze(-1),  # [B]
            "expression": expr,  # [B, N]
            "h_pert": hp,  # [B, N, d]
        }
        if self.cfg.n_gene_set:
            m = self.gene_set_mask.float()  # [N]
            pooled = (hp * m[None, :, None]).sum(1) / m.sum().clamp_min(1)  # [B, d]
            out["gene_set"] = self.gene_set(pooled)  # [B, m]
        return out, reg_loss, kl


def multitask_loss(pred: dict, batch: dict, weights: dict) -> tuple[torch.Tensor, dict]:
    """Sparse multi-task MSE: L = sum_t w_t * loss_t over the tasks with labels ``y_<t>`` in the batch.

    loss_t = mean over the labelled entries of (pred - y)^2, where ``m_<t>`` marks labelled entries.
    Unlabelled entries are removed by boolean indexing before any arithmetic, so their (possibly NaN) labels
    contribute neither value nor gradient; a task with no labelled entry (or weight 0) contributes 0.
    Normaliser: the number of labelled entries of that task in the batch. With ``batch["sample_weight"]``
    (Float [B], >= 0) each sample's entries are weighted by it and the normaliser is the weight sum.

    Parameters
    ----------
    pred : dict
        task -> prediction, [B] scalar tasks, [B, N] expression, [B, m] gene set.
    batch : dict
        ``y_<t>`` labels and ``m_<t>`` bool masks of the same shapes (expression: unmeasured genes False),
        optionally ``sample_weight``.
    weights : dict
        task -> weight w_t.

    Returns
    -------
    tuple
        (total loss, scalar tensor; {task: float loss_t} of the tasks that contributed).
    """
    total = None
    parts = {}
    for t, w in weights.items():
        if f"y_{t}" not in batch or t not in pred or w == 0:
            continue
        m = batch[f"m_{t}"]
        if not bool(m.any()):
            continue
        err = (pred[t][m] - batch[f"y_{t}"][m]).pow(2)  # [labelled entries]
        if "sample_weight" in batch:
            sw = batch["sample_weight"].view(-1, *([1] * (m.dim() - 1))).expand_as(m)[m]  # [labelled entries]
            lt = (err * sw).sum() / sw.sum().clamp_min(1e-12)  # scalar
        else:
            lt = err.mean()  # scalar
        parts[t] = float(lt.detach())
        total = w * lt if total is None else total + w * lt
    if total is None:
        total = next(iter(pred.values())).sum() * 0.0
    return total, parts


def build_model(kind: str, cfg: CGTConfig, graphs: dict | None = None, gene_set=None) -> nn.Module:
    """``kind`` in {``equivariant``, ``non_equivariant``}; graphs as for :meth:`SharedEncoder.set_graphs`.

    Parameters
    ----------
    kind : str
        ``equivariant`` (:class:`EquivariantCellGraphTransformer`) or ``non_equivariant``
        (:class:`CellGraphTransformer`).
    cfg : CGTConfig
        Model configuration.
    graphs : dict or None
        name -> (edge_index Long [2, E], edge_weight Float [E] or None, directed) for the regularisation.
    gene_set : optional
        Genes of the gene-set readout, passed to the equivariant model only.

    Returns
    -------
    torch.nn.Module
        The model (in training mode).

    Raises
    ------
    ValueError
        When ``kind`` is neither model kind.
    KeyError
        When ``cfg.graph_reg`` names a graph missing from ``graphs`` (:meth:`SharedEncoder.set_graphs`).
    """
    if kind == "equivariant":
        model = EquivariantCellGraphTransformer(cfg, gene_set)
    elif kind == "non_equivariant":
        model = CellGraphTransformer(cfg)
    else:
        raise ValueError(f"model kind must be equivariant or non_equivariant, not {kind!r}")
    if graphs:
        model.encoder.set_graphs(graphs)
    return model


def load(path, map_location="cpu") -> nn.Module:
    """Load ``{"kind", "config", "graphs", "state_dict", "genes"}`` written by :mod:`cellgraph.tl.perturb`.

    Parameters
    ----------
    path : str or path-like
        The checkpoint (``model.pt``), read with ``torch.load(weights_only=True)``.
    map_location : str or torch.device
        Device the tensors are loaded to.

    Returns
    -------
    torch.nn.Module
        The model with its weights, in eval mode.
    """
    ck = torch.load(path, map_location=map_location, weights_only=True)
    cfg = CGTConfig(**ck["config"])
    model = build_model(ck["kind"], cfg, ck.get("graphs"))
    model.load_state_dict(ck["state_dict"])
    return model.eval()


def config_dict(cfg: CGTConfig) -> dict:
    """``cfg`` as a plain dict (``dataclasses.asdict``), as stored under ``config`` in a perturbation ``model.pt``.

    Parameters
    ----------
    cfg : CGTConfig
        The configuration.

    Returns
    -------
    dict
        Field name -> value.
    """
    return dataclasses.asdict(cfg)
