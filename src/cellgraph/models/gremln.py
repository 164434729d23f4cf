r"""GREmLN: a transformer whose attention queries diffuse over the cell's gene regulatory network.

Zhang et al. 2025, *GREmLN: a cellular regulatory network-aware transcriptomics foundation model*.

Tokens. A cell is a sequence ``[CLS, g_1, ..., g_n]`` (batch dict of ``docs/design.md`` section 5). Each
token's input is the concatenation ``[E_gene(gene_id) || E_bin(bin)]`` of a gene-identity embedding and a
rank-bin embedding, each of width ``d/2`` (no projection, no positional embedding: the rank bin is the
token's value and the gene id its identity; the order of the tokens carries no information). The CLS token
is the ``<cls>`` gene id with the CLS bin; it is not a node of the graph.

Graph-diffusion attention (paper section 2.2, eq. 4). In every block the queries of the gene tokens are
diffused with the heat kernel of the cell's subgraph, the keys and values are left as they are:

.. math:: Q' = \exp(-\beta L)\, Q_{\text{genes}}, \qquad
          \operatorname{Attn} = \operatorname{softmax}\!\big(Q' K^\top / \sqrt{d_h}\big) V,

with ``L`` the symmetric normalised Laplacian [B, n, n] and :math:`\exp(-\beta L)` its Chebyshev expansion
(:func:`cellgraph.graphs.spectral.chebyshev_apply_dense`, appendix A.3) applied to ``Q`` reshaped to
[B, n, heads * d_h] (the same kernel for all heads). The CLS query is not diffused. Padded positions are
masked as keys. ``attention="vanilla"`` is the identical model with plain attention (the ablation).

``diffuse`` (config ``train.diffuse``) chooses what the kernel acts on: ``"queries"`` is eq. 4 above (the
default); ``"queries+values"`` also uses :math:`V' = \exp(-\beta L) V_{\text{genes}}`; ``"gated"`` keeps eq. 4
and adds :math:`g_h\,(\exp(-\beta L) - I) V_h` to head ``h``'s output, with a learned gate ``g_h`` that starts
at 0 (the model starts as eq. 4 and learns how much of the graph-smoothed values to take). Not in the paper:
on the demo data eq. 4 changes the embeddings by only a few percent when the graph is removed (issue 12).

Blocks are pre-LayerNorm (nanoGPT style: fused QKV projection, ``torch.nn.functional.
scaled_dot_product_attention``, GELU MLP of width 4d), followed by a final LayerNorm and a linear head over
the ``n_bins + 1`` bin values (masked rank modelling).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..io.shards import bin_special_ids
from ..graphs.spectral import chebyshev_apply_dense

__all__ = ["GREmLNConfig", "PRESETS", "preset", "GREmLN", "load", "bin_tokens"]


def bin_tokens(n_bins: int) -> dict[str, int]:
    """Special bin ids of design.md section 5: ``MASK = n_bins+1, PAD = n_bins+2, CLS = n_bins+3``.

    Parameters
    ----------
    n_bins : int
        The highest expression bin (bins are ``0..n_bins``); at least 2.

    Returns
    -------
    dict[str, int]
        ``MASK``, ``PAD``, ``CLS`` (bin ids) and ``size`` = n_bins + 4 (the bin vocabulary size), from
        :func:`cellgraph.io.shards.bin_special_ids`.

    Raises
    ------
    ValueError
        When ``n_bins < 2``.
    """
    return bin_special_ids(n_bins)


DIFFUSE = ("queries", "queries+values", "gated")


@dataclass
class GREmLNConfig:
    """Everything that defines a model and its training run (one preset = one instance).

    ``chebyshev_max_order`` is the cap on the Chebyshev order (paper: K = 64); the order actually used,
    ``chebyshev_order``, is the smaller of the cap and the order chosen by tolerance in
    ``coefficients.json`` (``coefficients`` holds the ``chebyshev_order + 1`` weights used).
    """

    # model
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.0
    attention: str = "gremln"  # "gremln" | "vanilla"
    vocab_size: int = 0  # genes + <pad> + <cls>, set from vocab.tsv
    n_bins: int = 100  # set from the token shards
    beta: float = 0.1
    diffuse: str = "queries"  # "queries" (eq. 4) | "queries+values" | "gated" (see Attention)
    chebyshev_max_order: int = 64
    chebyshev_order: int = 0
    coefficients: list[float] = field(default_factory=list)
    # training (paper appendix A.5: AdamW, linear warm-up then cosine decay)
    max_epochs: int = 8
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    mask_rate: float = 0.15
    gepc_weight: float = 0.0  # weight of the cell-embedding objective (GEPC, see GREmLN.gepc); 0 = off
    seed: int = 0
    preset: str = "demo"

    def __post_init__(self) -> None:
        if self.attention not in ("gremln", "vanilla"):
            raise ValueError(f"attention must be 'gremln' or 'vanilla', got {self.attention!r}")
        if self.diffuse not in DIFFUSE:
            raise ValueError(f"diffuse must be one of {DIFFUSE}, got {self.diffuse!r}")
        if self.d_model % 2 or self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be even and divisible by n_heads={self.n_heads}")
        if not 0.0 < self.mask_rate < 1.0:
            raise ValueError(f"mask_rate must be in (0, 1), got {self.mask_rate}")
        if not (self.gepc_weight >= 0.0 and math.isfinite(self.gepc_weight)):
            raise ValueError(f"gepc_weight must be a finite number >= 0, got {self.gepc_weight}")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a plain dict (``dataclasses.asdict``), as stored under ``config`` in ``model.pt``."""
        return dataclasses.asdict(self)


PRESETS: dict[str, GREmLNConfig] = {
    # small enough that both models train on ~2,100 cells x 128 tokens on 2 CPU cores in minutes
    "demo": GREmLNConfig(d_model=64, n_layers=2, n_heads=4, max_epochs=8, batch_size=32, lr=1e-3,
                         chebyshev_max_order=64, preset="demo"),
    # GREmLN paper appendix A.5
    "paper": GREmLNConfig(d_model=512, n_layers=3, n_heads=8, max_epochs=8, batch_size=64, lr=3e-4,
                          chebyshev_max_order=64, beta=0.1, preset="paper"),
}


def preset(name: str, **overrides: Any) -> GREmLNConfig:
    """A copy of preset ``name`` with ``overrides`` (``None`` values are ignored).

    Parameters
    ----------
    name : str
        Key of :data:`PRESETS` (``demo`` or ``paper``).
    **overrides
        ``GREmLNConfig`` fields to replace; ``None`` values are ignored.

    Returns
    -------
    GREmLNConfig
        A new configuration (``dataclasses.replace``); the preset itself is not changed.

    Raises
    ------
    KeyError
        When ``name`` is not a preset.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


class Attention(nn.Module):
    """Multi-head self-attention with optional heat-kernel diffusion of the gene-token queries (and values,
    ``cfg.diffuse``; module docstring)."""

    def __init__(self, cfg: GREmLNConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.graph = cfg.attention == "gremln"
        self.diffuse = cfg.diffuse
        if self.graph and cfg.diffuse == "gated":
            self.gate = nn.Parameter(torch.zeros(cfg.n_heads))
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, laplacian: torch.Tensor | None,
                coefficients: torch.Tensor | None) -> torch.Tensor:
        """``x`` [B, 1+n, d], ``key_mask`` Bool [B, 1+n] (True = real), ``laplacian`` [B, n, n] -> [B, 1+n, d]."""
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        h, dh = self.n_heads, d // self.n_heads
        graph_v = None
        if self.graph and self.diffuse == "queries":
            q = diffuse_queries(q, laplacian, coefficients)
        elif self.graph:  # one diffusion of [q || v]
            q, heat_v = diffuse_queries(torch.cat([q, v], dim=2), laplacian, coefficients).split(d, dim=2)
            if self.diffuse == "queries+values":
                v = heat_v
            else:
                graph_v = (heat_v - v).view(b, t, h, dh).transpose(1, 2)
        q, k, v = (z.view(b, t, h, dh).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
        )
        if graph_v is not None:
            y = y + self.gate[None, :, None, None] * graph_v
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(b, t, d)))


def diffuse_queries(q: torch.Tensor, laplacian: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    r"""``[q_CLS, exp(-beta L) q_genes]``: q [B, 1+n, F], laplacian [B, n, n] (fp32 even under autocast).

    Used for the queries and, with ``diffuse`` other than ``"queries"``, for ``[q || v]`` in one call.

    Parameters
    ----------
    q : torch.Tensor
        [B, 1+n, F] queries, position 0 = CLS (F = heads * d_h).
    laplacian : torch.Tensor
        [B, n, n] symmetric normalised Laplacians of the cells' subgraphs.
    coefficients : torch.Tensor
        [K+1] Chebyshev weights of the heat kernel :math:`\exp(-\beta L)`.

    Returns
    -------
    torch.Tensor
        [B, 1+n, F] in the dtype of ``q``: the CLS query unchanged, the gene queries diffused (computed in
        float32, or float64 for float64 input).

    References
    ----------
    GREmLN (Zhang et al. 2025) section 2.2, eq. 4; Chebyshev expansion, appendix A.3.
    """
    dt = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
    with torch.autocast(device_type=q.device.type, enabled=False):
        genes = chebyshev_apply_dense(laplacian.to(dt), q[:, 1:].to(dt), coefficients)
    return torch.cat([q[:, :1], genes.to(q.dtype)], dim=1)


class Block(nn.Module):
    """Pre-LayerNorm transformer block (nanoGPT style): x + Attn(LN(x)), then x + MLP(LN(x)) with a GELU MLP
    of width 4 d; :class:`Attention` diffuses the gene queries with the heat kernel for ``attention="gremln"``
    (GREmLN, Zhang et al. 2025, section 2.2, eq. 4).
    """
    def __init__(self, cfg: GREmLNConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x, key_mask, laplacian, coefficients):
        """x [B, 1+n, d], ``key_mask`` Bool [B, 1+n] (True = real token), ``laplacian`` [B, n, n] (None for the
        vanilla model), ``coefficients`` [K+1] Chebyshev weights -> [B, 1+n, d].
        """
        x = x + self.attn(self.ln_1(x), key_mask, laplacian, coefficients)
        return x + self.mlp(self.ln_2(x))


class GREmLN(nn.Module):
    """GREmLN encoder with a masked-rank head (``attention="vanilla"`` for the plain-attention ablation).

    Batches follow design.md section 5: ``gene_ids`` Long [B, 1+n], ``bins`` Long [B, 1+n],
    ``attention_mask`` Bool [B, 1+n], ``laplacian`` Float [B, n, n] (unused by the vanilla model).
    """

    def __init__(self, cfg: GREmLNConfig):
        super().__init__()
        if cfg.vocab_size < 3:
            raise ValueError(f"vocab_size must count <pad>, <cls> and genes, got {cfg.vocab_size}")
        if cfg.attention == "gremln" and not cfg.coefficients:
            raise ValueError("attention='gremln' needs Chebyshev coefficients")
        self.config = cfg
        half = cfg.d_model // 2
        self.gene_emb = nn.Embedding(cfg.vocab_size, half, padding_idx=0)
        self.bin_emb = nn.Embedding(bin_tokens(cfg.n_bins)["size"], half)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.n_bins + 1)
        if cfg.gepc_weight > 0:  # only then, so that checkpoints without the objective load unchanged
            self.gepc_gene = nn.Linear(half, cfg.d_model)
            self.gepc_cell = nn.Linear(cfg.d_model, cfg.d_model)
        self.register_buffer("coefficients", torch.tensor(cfg.coefficients or [1.0], dtype=torch.float64),
                             persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 scaled init of residual projections
            if name.endswith("c_proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def _check(self, batch: dict[str, torch.Tensor]) -> None:
        g = batch["gene_ids"]
        if g.ndim != 2 or batch["bins"].shape != g.shape or batch["attention_mask"].shape != g.shape:
            raise ValueError("gene_ids, bins and attention_mask must all be [B, 1+n]")
        if self.config.attention == "gremln":
            b, t = g.shape
            if batch["laplacian"].shape != (b, t - 1, t - 1):
                raise ValueError(f"laplacian must be [B, n, n] = {(b, t - 1, t - 1)}, "
                                 f"got {tuple(batch['laplacian'].shape)}")

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Final-LayerNorm hidden states [B, 1+n, d] (position 0 = CLS).

        Raises ValueError if the batch tensors do not have the shapes of design.md section 5.
        """
        self._check(batch)
        x = torch.cat([self.gene_emb(batch["gene_ids"]), self.bin_emb(batch["bins"])], dim=-1)
        x = self.drop(x)
        key_mask = batch["attention_mask"].bool()
        lap = batch.get("laplacian") if self.config.attention == "gremln" else None
        for block in self.blocks:
            x = block(x, key_mask, lap, self.coefficients)
        return self.ln_f(x)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B, 1+n, n_bins + 1] over the bin values 0..n_bins at every position."""
        return self.head(self.encode(batch))

    def gepc(self, hidden: torch.Tensor) -> torch.Tensor:
        r"""Every vocabulary gene's bin predicted from the cell embedding alone (GEPC), in units of ``n_bins``.

        scGPT's "gene expression prediction for cell modelling" (Cui et al. 2024, *Nature Methods* 21:1470,
        Methods, GEPC): :math:`\hat x_{c,g} = (W_g e_g + b_g)^\top (W_c h_c + b_c)`, with :math:`e_g` the
        gene-identity embedding of gene ``g`` and :math:`h_c` the final CLS state of cell ``c``. It is read out
        for every gene of the vocabulary, expressed or not (a gene that is not a token of the cell has bin 0),
        and the only way from the cell's tokens to :math:`\hat x_{c,g}` is through the CLS state: trained
        with :func:`cellgraph.training.pretrain.masked_step`, the CLS embedding becomes a summary of the cell's
        expression state.

        Parameters
        ----------
        hidden : torch.Tensor
            Float [B, 1+n, d], :meth:`encode`'s output.

        Returns
        -------
        torch.Tensor
            Float [B, vocab_size], predicted ``bin / n_bins`` (target range 0-1); columns ``<pad>`` and
            ``<cls>`` (ids 0, 1) carry no gene.

        Raises
        ------
        RuntimeError
            When the model was built with ``gepc_weight = 0`` (it has no GEPC head).
        """
        if self.config.gepc_weight <= 0:
            raise RuntimeError("this model has no GEPC head (gepc_weight = 0)")
        genes = self.gepc_gene(self.gene_emb.weight)  # [V, d]
        return self.gepc_cell(hidden[:, 0]) @ genes.T  # [B, V]


def load(path, map_location: str | torch.device = "cpu") -> GREmLN:
    """Load ``model.pt`` (``{"config", "state_dict", "vocab"}``) written by ``cellgraph train``; eval mode.

    The vocabulary (list of gene symbols by token id) is attached as ``model.vocab``.

    Parameters
    ----------
    path : str or path-like
        The checkpoint, read with ``torch.load(weights_only=True)``.
    map_location : str or torch.device
        Device the tensors are loaded to and the model is moved to.

    Returns
    -------
    GREmLN
        The model in eval mode, with ``model.vocab``.

    Raises
    ------
    FileNotFoundError
        When ``path`` is missing (from ``torch.load``).
    KeyError
        When a key of the checkpoint is missing.
    """
    obj = torch.load(path, map_location=map_location, weights_only=True)
    # checkpoints written before the ``diffuse`` option diffused the queries only
    model = GREmLN(GREmLNConfig(**{"diffuse": "queries", **obj["config"]}))
    model.load_state_dict(obj["state_dict"])
    model.vocab = list(obj["vocab"])
    return model.to(map_location).eval()
