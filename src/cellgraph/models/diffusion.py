r"""Latent-token diffusion transformer: a conditional generative model of a cell's expression profile.

The model has three parts. All sizes come from one :class:`DiffusionConfig`.

- **Token autoencoder.** :meth:`LatentDiffusion.encode` maps the normalised expression x [B, G] with an MLP
  to [B, T*L], reshapes it to T tokens of width L (``latent_dim``; ``d_model`` when 0) [B, T, L] and adds
  learned token-position embeddings. The tokens are a sequence, not an image, so there is no convolution.
  :meth:`LatentDiffusion.decode` does the reverse: it flattens, then an MLP gives [B, G]. With
  ``kl_weight`` > 0 the encoder is variational (mean and log-variance; KL to N(0, I), beta-VAE).
- **Observation model** (``likelihood``). ``gaussian``: the decoder regresses x (MSE), so it returns
  E[x | z] and never a zero. ``nb`` / ``zinb``: the decoder gives rho = softmax over genes and
  the counts follow NB(mean = library x rho, gene-wise inverse dispersion theta), optionally with
  zero-inflation logits, as in scVI (Lopez et al. 2018, *Nat. Methods* 15:1053, Methods); the library size
  (total counts) is observed when training and given at generation. Generated cells are sampled counts
  (:meth:`LatentDiffusion.sample_counts`).
- **Denoiser** (DiT, Peebles & Xie 2023, *Scalable Diffusion Models with Transformers*, sec. 3.2): a linear
  input projection plus learned position embeddings, then L adaLN-Zero blocks over the T tokens. Each
  block's shift/scale/gate come from c = MLP(sinusoidal(t)) + e_cond and are zero-initialised, as is the
  final linear layer, so at initialisation every block is the identity and the prediction is 0.
  ``conditioning="cross_attention"`` instead keeps adaLN for the timestep only (c = MLP(sinusoidal(t)))
  and adds to each block a gated cross-attention sub-layer from the tokens to the condition tokens (one
  token per condition kind plus the fused token).
- **Condition embedders**, one module per kind, combined by a learned fusion MLP over their concatenation:
  categorical (cell type; an embedding table whose extra row ``n_cell_types`` is "none", used for -1 and
  for dropped conditions); perturbation set (per-gene embeddings, or with ``n_set_features`` > 0 a shared
  "perturbed" vector plus one learned projection of fixed gene features, so an unseen gene takes the same
  path as a trained one; then a small transformer encoder over the
  set without position embeddings and with key padding masks, then the masked mean. The result does not
  depend on the order of the set. An empty set gets its own learned embedding, and a dropped set gets a
  different one, "null"); continuous (an MLP). With condition dropout (``cond_dropout``, training only),
  sampling can use classifier-free guidance (Ho & Salimans 2022):
  :math:`\hat\epsilon = \hat\epsilon_\varnothing + s(\hat\epsilon_c - \hat\epsilon_\varnothing)`.

Diffusion (Ho et al. 2020, *DDPM*). The timesteps are t = 0..n_timesteps-1, with
:math:`\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)` and
:math:`q(x_t | x_0) = \mathcal N(\sqrt{\bar\alpha_t}\, x_0, (1 - \bar\alpha_t) I)`. There are two schedules.
``linear`` (Ho et al.) takes beta from 1e-4 to 0.02, scaled by 1000 / n_timesteps. ``cosine`` (Nichol &
Dhariwal 2021, eq. 17) uses :math:`\bar\alpha_t = f(t+1)/f(0)` with
:math:`f(u) = \cos^2(\frac{u/T + s}{1 + s}\frac{\pi}{2})` and s = 0.008, with beta clipped at 0.999. The
prediction is either ``eps`` or ``v`` (Salimans & Ho 2022, *Progressive Distillation*, sec. 4):
:math:`v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\, x_0`, so that
:math:`x_0 = \sqrt{\bar\alpha_t}\, x_t - \sqrt{1-\bar\alpha_t}\, v`. The loss is the MSE to the target
at a random t per sample. Sampling has two methods. ``ddpm`` is ancestral over all steps with the posterior
variance :math:`\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t` (Ho et al., eq. 7).
``ddim`` (Song et al. 2021, eq. 12) uses strided steps and
:math:`\sigma_t = \eta \sqrt{(1-\bar\alpha_{t-1})/(1-\bar\alpha_t)}\sqrt{1 - \bar\alpha_t/\bar\alpha_{t-1}}`.
With all steps and eta = 1, DDIM gives the same distribution as DDPM.

Latent scale. Diffusion runs on :math:`u = (z - \mu)/\sigma`, where z = encode(x), μ [T, D] is the mean
latent and σ is one scalar, the standard deviation of z - μ over all entries. Both are buffers set by
:meth:`LatentDiffusion.set_latent_scale` (the "scale factor" of Rombach et al. 2022, sec. 4.3.2, plus
centring). The schedule assumes unit-variance data, so without this the signal-to-noise ratio at each t
depends on how large the autoencoder happened to make its latents.

**Default training_mode: ``two_stage``.** The autoencoder is trained first (reconstruction MSE). Then the
latent statistics are fixed and the diffusion model learns in that frozen latent space. This is the
default for three reasons. (1) The denoiser's target distribution stays fixed while it learns. End to
end, the encoder can move or shrink the latent to make denoising easier without making generation better.
(2) The latent scale is measured once, on the trained encoder, so the noise schedule means what it says.
(3) The two losses do not have to be weighted against each other. ``end_to_end`` is provided: the latent
is standardised with batch statistics (with gradients, so its scale cannot collapse), and running
statistics are kept for sampling.

What we measured on 64 real Papalexi cells x 299 genes (log1p CP10k; data std 1.92), demo model with T 4 and
D 32, and AdamW at lr 2e-3, on one CPU thread:

- After 300 autoencoder steps (reconstruction MSE 4.8 -> 4e-4), the raw latent has mean RMS 1.98 and std
  2.17 around that mean. Unscaled, it would enter the schedule with about 3x the unit scale the schedule
  assumes, so at every t the signal-to-noise ratio would be about 9x what was designed.
- Two stage, 300 diffusion steps: the denoising loss on fixed (t, noise) went from 1.01 to 0.50 (eps). The
  DDIM-50 and DDPM samples give a Pearson of 0.90-0.94 between the generated and the real mean over genes,
  with std 2.6-3.2. With ``v`` the loss went from 1.04 to 0.86 (the v target is harder at large t), but the
  samples are better: Pearson 0.98 and std 1.84.
- End to end, 600 joint steps: the denoising loss is lower (eps 0.09, v 0.11) because the encoder makes
  its latent easy to denoise, but the samples are worse. Pearson is 0.65 (eps) or 0.87 (v), the sample std
  is 3.4 to 337, and the largest |u| is 11-25 against 4.0 for two stage (heavy-tailed latents).
- With eps, the cosine schedule and no x0 clipping, sampling diverged (sample std ~5e3), because x0_hat is
  (u - sqrt(1 - abar) eps_hat) / sqrt(abar) and abar is 2.4e-9 at the last step. Sampling therefore clamps
  x0_hat to the largest |u| seen when fitting (``clip_x0=True``, the latent analogue of image diffusion's
  [-1, 1] clipping). With cosine, ``prediction="v"`` is the better-conditioned choice.

Conditions travel as a dict ``cond``. A key that is absent means the condition is not given. Keys for kinds
the config does not use are ignored.

- ``cell_type``: Long [B], values 0..n_cell_types-1, or -1 = "none".
- ``set_genes``: Long [B, S], S >= 0, indices into the set-gene vocabulary. Padding positions are ignored.
- ``set_mask``: Bool [B, S], True = a real member. A row that is all False is the empty set.
- ``continuous``: Float [B, n_continuous].

Bad configuration values or inputs raise :class:`cellgraph.errors.InputError`, with one message that names
the field and says what was expected.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

__all__ = ["DiffusionConfig", "PRESETS", "NoiseSchedule", "TimestepEmbedder", "CategoricalEmbedder",
           "SetEmbedder", "ContinuousEmbedder", "ConditionEmbedder", "DiTBlock", "FinalLayer", "Denoiser",
           "LatentDiffusion", "timestep_embedding"]

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")
CONDITIONINGS = ("adaln", "cross_attention")
TRAINING_MODES = ("two_stage", "end_to_end")
PHASES = ("autoencoder", "diffusion", "end_to_end")
SAMPLERS = ("ddpm", "ddim")
LIKELIHOODS = ("gaussian", "nb", "zinb")
MAX_LATENT = 1 << 24  # n_tokens * d_model above this (16.7M latent values per cell) cannot be materialised


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class DiffusionConfig:
    """Every hyper-parameter of the model; the model takes this and nothing else."""

    n_genes: int  # G, genes of the expression vector
    n_tokens: int = 64  # T latent tokens
    d_model: int = 256  # D token width
    n_layers: int = 6  # denoiser blocks
    n_heads: int = 8
    mlp_ratio: float = 4.0
    ae_hidden: int = 512  # encoder/decoder MLP width
    conditioning: str = "adaln"  # "adaln" | "cross_attention"
    n_cell_types: int = 0  # categorical condition; 0 = not used
    n_set_genes: int = 0  # vocabulary of perturbation-set genes; 0 = not used
    set_layers: int = 1  # transformer-encoder layers over the set
    n_continuous: int = 0  # continuous condition features; 0 = not used
    cond_dropout: float = 0.1  # training-time condition dropout probability (classifier-free guidance)
    schedule: str = "cosine"  # "linear" | "cosine"
    n_timesteps: int = 1000
    prediction: str = "eps"  # "eps" | "v"
    training_mode: str = "two_stage"  # "two_stage" | "end_to_end"
    dropout: float = 0.0
    likelihood: str = "gaussian"  # autoencoder observation model: "gaussian" (MSE) | "nb" | "zinb" (counts)
    latent_dim: int = 0  # L, width of a latent token (0 = d_model); the latent is T * L values per cell
    kl_weight: float = 0.0  # > 0: variational encoder (mean, log-variance) with this weight on KL(q(z|x) || N(0, I))
    n_set_features: int = 0  # > 0: set genes are embedded from fixed features [n_set_genes, F] (no per-gene rows)
    feature_dropout: float = 0.0  # training: probability that a set gene's features are dropped (-> "perturbed")

    def __post_init__(self) -> None:
        for name, allowed in (("schedule", SCHEDULES), ("prediction", PREDICTIONS),
                              ("conditioning", CONDITIONINGS), ("training_mode", TRAINING_MODES),
                              ("likelihood", LIKELIHOODS)):
            if getattr(self, name) not in allowed:
                raise InputError(f"DiffusionConfig.{name}: expected one of {list(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        for name, low in (("n_genes", 1), ("n_tokens", 1), ("d_model", 2), ("n_layers", 1), ("n_heads", 1),
                          ("ae_hidden", 1), ("n_cell_types", 0), ("n_set_genes", 0), ("set_layers", 0),
                          ("n_continuous", 0), ("n_timesteps", 2), ("latent_dim", 0), ("n_set_features", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InputError(f"DiffusionConfig.{name}: expected an integer >= {low}, got {v!r}")
        if self.d_model % self.n_heads:
            raise InputError(f"DiffusionConfig.d_model: expected a multiple of n_heads={self.n_heads}, "
                             f"got {self.d_model}")
        if self.n_tokens * self.token_dim > MAX_LATENT:
            raise InputError(f"DiffusionConfig.n_tokens * latent_dim: expected at most {MAX_LATENT} latent values "
                             f"per cell, got {self.n_tokens} * {self.token_dim} = {self.n_tokens * self.token_dim}")
        if isinstance(self.kl_weight, bool) or not isinstance(self.kl_weight, (int, float)) or \
                not 0 <= self.kl_weight < math.inf:
            raise InputError(f"DiffusionConfig.kl_weight: expected a number >= 0, got {self.kl_weight!r}")
        for name, lo, hi in (("cond_dropout", 0.0, 1.0), ("dropout", 0.0, 0.999), ("feature_dropout", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise InputError(f"DiffusionConfig.{name}: expected a number in [{lo}, {hi}], got {v!r}")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) or \
                self.mlp_ratio <= 0:
            raise InputError(f"DiffusionConfig.mlp_ratio: expected a number > 0, got {self.mlp_ratio!r}")

    @property
    def token_dim(self) -> int:
        """L, the width of one latent token (``latent_dim``, or ``d_model`` when 0)."""
        return self.latent_dim or self.d_model

    @property
    def counts(self) -> bool:
        """True when the autoencoder models raw counts (``likelihood`` nb or zinb)."""
        return self.likelihood != "gaussian"

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a plain dict (``dataclasses.asdict``), as stored in ``model.pt``."""
        return dataclasses.asdict(self)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "DiffusionConfig":
        """Preset ``demo`` (T 8, D 64, 2 blocks: trains on 2 CPU cores in minutes) or ``paper`` (T 64, D 256,
        6 blocks) with ``overrides``. ``n_genes`` must be given. Raises InputError."""
        if name not in PRESETS:
            raise InputError(f"DiffusionConfig preset: expected one of {sorted(PRESETS)}, got {name!r}")
        if "n_genes" not in overrides:
            raise InputError("DiffusionConfig preset: expected n_genes=<number of genes> among the overrides")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise InputError(f"DiffusionConfig preset {name!r}: unknown field(s) {unknown}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    "demo": dict(n_tokens=8, d_model=64, n_layers=2, n_heads=4, mlp_ratio=2.0, ae_hidden=256, set_layers=1),
    "paper": dict(n_tokens=64, d_model=256, n_layers=6, n_heads=8, mlp_ratio=4.0, ae_hidden=512, set_layers=1),
}


def _extract(buf: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """buf [n_timesteps] at t Long [B] -> [B, 1, ..., 1] broadcastable to ``like``, in its dtype/device."""
    out = buf.to(like.device)[t.to(like.device)].to(like.dtype)  # [B]
    return out.view(-1, *([1] * (like.ndim - 1)))


def _randn(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise from ``generator`` (drawn on the generator's device, moved to ``device``)."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


# --------------------------------------------------------------------------------------------------
# Noise schedule (DDPM forward process, prediction-parameter conversions, samplers' coefficients)
# --------------------------------------------------------------------------------------------------


class NoiseSchedule(nn.Module):
    r"""Buffers ``betas``, ``alphas``, ``alphas_cumprod``, ``alphas_cumprod_prev`` and the DDPM posterior
    coefficients, all [n_timesteps] float64 (cast to the input's dtype when used; not in the state dict).

    ``linear``: :math:`\beta_t` = linspace(1e-4 k, 0.02 k) with k = 1000 / n_timesteps (Ho et al. 2020).
    ``cosine``: :math:`\bar\alpha_t = f(t+1)/f(0)`, :math:`f(u) = \cos^2(\frac{u/T + 0.008}{1.008}\frac\pi2)`,
    :math:`\beta_t = \min(1 - \bar\alpha_t/\bar\alpha_{t-1}, 0.999)` (Nichol & Dhariwal 2021, eq. 17).
    """

    def __init__(self, schedule: str = "cosine", n_timesteps: int = 1000):
        super().__init__()
        if schedule not in SCHEDULES:
            raise InputError(f"schedule: expected one of {list(SCHEDULES)}, got {schedule!r}")
        n = int(n_timesteps)
        if schedule == "linear":
            k = 1000.0 / n
            betas = torch.linspace(1e-4 * k, 0.02 * k, n, dtype=torch.float64)  # [n]
        else:
            u = torch.arange(n + 1, dtype=torch.float64)  # [n+1]
            f = torch.cos((u / n + 0.008) / 1.008 * math.pi / 2) ** 2  # [n+1]
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)  # [n]
        alphas = 1.0 - betas  # [n]
        abar = torch.cumprod(alphas, 0)  # [n]
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])  # [n] abar_{t-1}, with abar_{-1} = 1
        self.schedule, self.n_timesteps = schedule, n
        for name, val in (
            ("betas", betas), ("alphas", alphas), ("alphas_cumprod", abar), ("alphas_cumprod_prev", abar_prev),
            ("posterior_variance", betas * (1 - abar_prev) / (1 - abar)),  # beta~_t (Ho eq. 7)
            ("posterior_mean_coef1", betas * abar_prev.sqrt() / (1 - abar)),  # coefficient of x_0
            ("posterior_mean_coef2", (1 - abar_prev) * alphas.sqrt() / (1 - abar)),  # coefficient of x_t
        ):
            self.register_buffer(name, val, persistent=False)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; x0, noise [B, ...], t Long [B] -> [B, ...]."""
        a = _extract(self.alphas_cumprod, t, x0)  # [B, 1, ...]
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
        """Regression target: eps, or v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, eq. 7 ff.)."""
        if prediction == "eps":
            return noise
        a = _extract(self.alphas_cumprod, t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def predict_x0_eps(self, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor, prediction: str):
        """Model output ``pred`` (eps or v) at x_t -> (x0_hat, eps_hat), both shaped like x_t.

        eps: x0 = (x_t - sqrt(1-abar) eps) / sqrt(abar). v: x0 = sqrt(abar) x_t - sqrt(1-abar) v,
        eps = sqrt(1-abar) x_t + sqrt(abar) v."""
        a = _extract(self.alphas_cumprod, t, x_t)
        if prediction == "eps":
            return (x_t - (1 - a).sqrt() * pred) / a.sqrt(), pred
        if prediction == "v":
            return a.sqrt() * x_t - (1 - a).sqrt() * pred, (1 - a).sqrt() * x_t + a.sqrt() * pred
        raise InputError(f"prediction: expected one of {list(PREDICTIONS)}, got {prediction!r}")

    def ddim_timesteps(self, steps: int) -> torch.Tensor:
        """``steps`` timesteps evenly spread over 0..n_timesteps-1, descending (all of them when steps = n)."""
        ts = torch.linspace(0, self.n_timesteps - 1, steps, dtype=torch.float64).round().long().unique()
        return ts.flip(0)  # [steps']


# --------------------------------------------------------------------------------------------------
# Embedders: timestep and conditions
# --------------------------------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017; DiT): t [B] -> [B, dim] = [cos(t w_k) || sin(t w_k)].

    Parameters
    ----------
    t : torch.Tensor
        Timesteps [B] (any numeric dtype; used as float32).
    dim : int
        Width of the embedding; odd ``dim`` gets one zero column at the end.
    max_period : float
        Longest period: the frequencies are w_k = max_period ** (-k / (dim // 2)), k = 0..dim // 2 - 1.

    Returns
    -------
    torch.Tensor
        float32 [B, dim], on ``t``'s device.

    References
    ----------
    Vaswani et al. 2017, *Attention Is All You Need*; Peebles & Xie 2023 (DiT) timestep embedder.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)  # [B, 2 half]
    return F.pad(emb, (0, dim - 2 * half))  # [B, dim]


class TimestepEmbedder(nn.Module):
    """t Long [B] -> MLP(sinusoidal(t)) [B, D]."""

    def __init__(self, d: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, d), nn.SiLU(), nn.Linear(d, d))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t Long [B] -> MLP(sinusoidal(t)) [B, D]."""
        return self.mlp(timestep_embedding(t, self.freq_dim))  # [B, D]


class CategoricalEmbedder(nn.Module):
    """Categories 0..n-1 and -1 = "none" -> [B, D]; row n of the table is "none" (also the dropped value)."""

    def __init__(self, n: int, d: int):
        super().__init__()
        self.n = n
        self.table = nn.Embedding(n + 1, d)  # [n+1, D]

    def forward(self, idx: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """idx Long [B] (-1 = none), drop Bool [B] -> [B, D]."""
        idx = torch.where((idx < 0) | drop, torch.full_like(idx, self.n), idx)  # [B]
        return self.table(idx)  # [B, D]


class SetEmbedder(nn.Module):
    """Perturbation set -> [B, D]: gene embeddings, a transformer encoder over the set (no positions, key
    padding mask), masked mean. The empty set has a learned embedding; a dropped set the learned "null".

    Invariant to the order of the members: self-attention without position embeddings is permutation
    equivariant and the masked mean is invariant. Empty rows never attend to an all-masked key set (their
    keys are unmasked and the result is replaced), so no NaN reaches values or gradients.
    """

    def __init__(self, n_genes: int, d: int, n_layers: int, n_heads: int, mlp_ratio: float, dropout: float,
                 n_features: int = 0, feature_dropout: float = 0.0):
        super().__init__()
        self.n_features, self.feature_dropout = n_features, feature_dropout
        if n_features:  # gene i -> perturbed + W f_i: an unseen gene takes the same path as a trained one
            self.register_buffer("gene_features", torch.zeros(n_genes, n_features))  # [V, F], set_gene_features
            self.feature_proj = nn.Linear(n_features, d)  # zero-initialised: every gene starts at "perturbed"
            self.perturbed = nn.Parameter(torch.zeros(d))  # [D] shared by all genes: the average perturbation
        else:
            self.gene = nn.Embedding(n_genes, d)  # [V, D]
        self.encoder = None
        if n_layers:
            layer = nn.TransformerEncoderLayer(d, n_heads, int(mlp_ratio * d), dropout, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.empty = nn.Parameter(torch.zeros(d))  # [D] the empty set
        self.null = nn.Parameter(torch.zeros(d))  # [D] dropped condition (classifier-free guidance)

    def forward(self, genes: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """genes Long [B, S], mask Bool [B, S] (True = member), drop Bool [B] -> [B, D]."""
        b, s = genes.shape
        d = self.empty.shape[0]
        has = mask.any(1) if s else torch.zeros(b, dtype=torch.bool, device=genes.device)  # [B]
        if s:
            h = self.embed_genes(torch.where(mask, genes, torch.zeros_like(genes)))  # [B, S, D]
            if self.encoder is not None:
                pad = ~(mask | ~has[:, None])  # [B, S] True = ignored key; empty rows keep all keys
                h = self.encoder(h, src_key_padding_mask=pad)  # [B, S, D]
            m = mask.to(h.dtype)[..., None]  # [B, S, 1]
            pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)  # [B, D]
        else:
            pooled = self.empty.new_zeros(b, d)  # [B, D]
        out = torch.where(has[:, None], pooled, self.empty.to(pooled.dtype).expand(b, d))  # [B, D]
        return torch.where(drop[:, None], self.null.to(out.dtype).expand(b, d), out)  # [B, D]

    def embed_genes(self, genes: torch.Tensor) -> torch.Tensor:
        """Gene indices Long [...] -> embeddings [..., D]: the per-gene row, or perturbed + W features. When
        training with ``feature_dropout`` p, each member's features are zeroed with probability p, so the
        shared "perturbed" vector learns the effect of a perturbation whose gene says nothing (the average
        one) and W f the departure from it (a shrinkage of unseen genes towards the average effect)."""
        if self.n_features:
            f = self.gene_features[genes]  # [..., F]
            if self.training and self.feature_dropout > 0:
                keep = torch.rand(f.shape[:-1], device=f.device) >= self.feature_dropout
                f = f * keep[..., None].to(f.dtype)
            return self.perturbed + self.feature_proj(f)
        return self.gene(genes)

    @torch.no_grad()
    def set_gene_features(self, features: torch.Tensor) -> None:
        """Fix the gene features [n_set_genes, F] (e.g. random-walk features on the gene multigraph). Raises
        InputError for another shape, non-finite values or a set embedder with per-gene rows."""
        if not self.n_features:
            raise InputError("set-gene features: the config has n_set_features = 0 (per-gene embedding rows)")
        want = tuple(self.gene_features.shape)
        if not torch.is_tensor(features) or tuple(features.shape) != want:
            shape = tuple(features.shape) if torch.is_tensor(features) else type(features).__name__
            raise InputError(f"set-gene features: expected [n_set_genes, n_set_features] = {want}, got {shape}")
        if not torch.isfinite(features).all():
            raise InputError("set-gene features: expected finite values, found NaN or inf")
        self.gene_features.copy_(features.to(self.gene_features))

    @torch.no_grad()
    def init_gene_embeddings(self, vectors: torch.Tensor, known: torch.Tensor | None = None) -> None:
        """Initialise the per-gene embeddings from ``vectors`` [V, E] (e.g. GREmLN gene embeddings, rows in the
        set-gene vocabulary order); rows with ``known`` [V] False keep their init. E != D: the known rows are
        projected on their top-D principal axes (E > D) or zero-padded (E < D); then rescaled so their RMS
        equals the RMS of the current init. Raises InputError with fixed gene features (no per-gene rows)."""
        if self.n_features:
            raise InputError("set-gene embeddings: this set embedder uses fixed gene features (no per-gene rows)")
        v, d = self.gene.weight.shape
        if not torch.is_tensor(vectors) or vectors.ndim != 2 or vectors.shape[0] != v:
            shape = tuple(vectors.shape) if torch.is_tensor(vectors) else type(vectors).__name__
            raise InputError(f"set-gene embeddings: expected vectors [n_set_genes={v}, E], got {shape}")
        known = torch.ones(v, dtype=torch.bool) if known is None else torch.as_tensor(known).bool().cpu()
        if known.shape != (v,):
            raise InputError(f"set-gene embeddings: expected known Bool [n_set_genes={v}], "
                             f"got {tuple(known.shape)}")
        if not bool(known.any()):
            return
        w = vectors.detach().to(torch.float32).cpu()[known]  # [V', E]
        if not torch.isfinite(w).all():
            raise InputError("set-gene embeddings: expected finite vectors, found NaN or inf")
        w = w - w.mean(0)
        if w.shape[1] > d:
            _, _, vh = torch.linalg.svd(w, full_matrices=False)
            w = w @ vh[:d].T  # [V', min(D, rank)]
        w = F.pad(w, (0, d - w.shape[1]))  # [V', D]
        rms = self.gene.weight.pow(2).mean().sqrt()
        w = w * (rms / w.pow(2).mean().sqrt().clamp_min(1e-12))
        self.gene.weight[known.to(self.gene.weight.device)] = w.to(self.gene.weight)


class ContinuousEmbedder(nn.Module):
    """Continuous features [B, C] -> MLP -> [B, D]; a dropped row gets the learned "null"."""

    def __init__(self, n: int, d: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(n, d), nn.SiLU(), nn.Linear(d, d))
        self.null = nn.Parameter(torch.zeros(d))  # [D]

    def forward(self, x: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """x [B, C], drop Bool [B] -> [B, D]; dropped rows get the learned null."""
        e = self.mlp(x)  # [B, D]
        return torch.where(drop[:, None], self.null.to(e.dtype).expand_as(e), e)  # [B, D]


class ConditionEmbedder(nn.Module):
    """Composes the configured embedders; fusion = MLP over their concatenation.

    Returns ``(fused [B, D], tokens [B, K+1, D])``: the fused vector (adaLN input) and, for cross-attention,
    the fused vector followed by the K per-kind embeddings (each plus a learned kind embedding). With no
    condition configured (K = 0) the fused vector is a learned constant. Every kind is replaced by its own
    null value where ``drop`` is True, so with ``drop`` all True nothing depends on ``cond``.
    """

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        d = cfg.d_model
        self.kinds: list[str] = []
        if cfg.n_cell_types:
            self.cell_type = CategoricalEmbedder(cfg.n_cell_types, d)
            self.kinds.append("cell_type")
        if cfg.n_set_genes:
            self.set = SetEmbedder(cfg.n_set_genes, d, cfg.set_layers, cfg.n_heads, cfg.mlp_ratio, cfg.dropout,
                                   cfg.n_set_features, cfg.feature_dropout)
            self.kinds.append("set")
        if cfg.n_continuous:
            self.continuous = ContinuousEmbedder(cfg.n_continuous, d)
            self.kinds.append("continuous")
        k = len(self.kinds)
        if k:
            self.fusion = nn.Sequential(nn.Linear(k * d, d), nn.SiLU(), nn.Linear(d, d))
            self.kind_emb = nn.Parameter(torch.zeros(k, d))  # [K, D]
        else:
            self.const = nn.Parameter(torch.zeros(d))  # [D]

    def forward(self, cond: dict, drop: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the conditions of a batch of ``b`` cells.

        Parameters
        ----------
        cond : the condition dict (validated by :meth:`LatentDiffusion.check_cond`).
        drop : Bool [B], True = condition dropped (replaced by each kind's null).
        b : batch size B (used when no condition kind is configured).

        Returns
        -------
        (fused [B, D], tokens [B, K+1, D]); with K = 0: the learned constant and [B, 1, D].
        """
        if not self.kinds:
            fused = self.const.expand(b, -1)  # [B, D]
            return fused, fused[:, None]  # [B, D], [B, 1, D]
        parts = []
        for kind in self.kinds:
            if kind == "cell_type":
                parts.append(self.cell_type(cond["cell_type"], drop))  # [B, D]
            elif kind == "set":
                parts.append(self.set(cond["set_genes"], cond["set_mask"], drop))  # [B, D]
            else:
                parts.append(self.continuous(cond["continuous"], drop))  # [B, D]
        fused = self.fusion(torch.cat(parts, -1))  # [B, D]
        tokens = torch.stack(parts, 1) + self.kind_emb  # [B, K, D]
        return fused, torch.cat([fused[:, None], tokens], 1)  # [B, D], [B, K+1, D]


# --------------------------------------------------------------------------------------------------
# Denoiser: DiT blocks with adaLN-Zero (and optional cross-attention to the condition tokens)
# --------------------------------------------------------------------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, T, D] * (1 + scale [B, D]) + shift [B, D] (the adaLN modulation of DiT).

    Parameters
    ----------
    x : torch.Tensor
        Normalised tokens [B, T, D].
    shift : torch.Tensor
        Per-sample shift [B, D], broadcast over the T tokens.
    scale : torch.Tensor
        Per-sample scale [B, D] (0 = identity), broadcast over the T tokens.

    Returns
    -------
    torch.Tensor
        The modulated tokens [B, T, D].
    """
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head attention with ``scaled_dot_product_attention``: fused QKV for self-attention, a Q and a
    fused KV projection for cross-attention to ``ctx``."""

    def __init__(self, d: int, n_heads: int, dropout: float, cross: bool = False):
        super().__init__()
        self.h, self.cross, self.dropout = n_heads, cross, dropout
        if cross:
            self.q, self.kv = nn.Linear(d, d), nn.Linear(d, 2 * d)
        else:
            self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, D] (ctx [B, C, D]) -> [B, T, D]."""
        b, t, d = x.shape
        dh = d // self.h
        if self.cross:
            q = self.q(x).view(b, t, self.h, dh).transpose(1, 2)  # [B, H, T, dh]
            k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.h, dh).permute(2, 0, 3, 1, 4)  # [B, H, C, dh]
        else:
            q, k, v = self.qkv(x).view(b, t, 3, self.h, dh).permute(2, 0, 3, 1, 4)  # each [B, H, T, dh]
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # [B, H, T, dh]
        return self.proj(y.transpose(1, 2).reshape(b, t, d))  # [B, T, D]


class DiTBlock(nn.Module):
    """adaLN-Zero block (DiT fig. 3): x += g1 Attn(mod(LN(x))); [x += g_c CrossAttn(mod(LN(x)), ctx)];
    x += g2 MLP(mod(LN(x))), with (shift, scale, gate) per sub-layer = Linear(SiLU(c)), zero-initialised.
    LayerNorms have no affine parameters (the modulation replaces them)."""

    def __init__(self, cfg: DiffusionConfig, cross: bool = False):
        super().__init__()
        d = cfg.d_model
        self.cross = cross
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, cfg.n_heads, cfg.dropout)
        if cross:
            self.norm_c = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
            self.norm_ctx = nn.LayerNorm(d)
            self.cross_attn = Attention(d, cfg.n_heads, cfg.dropout, cross=True)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(cfg.mlp_ratio * d)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Dropout(cfg.dropout),
                                 nn.Linear(hidden, d))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, (9 if cross else 6) * d))

    def forward(self, x: torch.Tensor, c: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, D], c [B, D], ctx [B, C, D] (cross-attention only) -> [B, T, D]."""
        mods = self.adaLN_modulation(c).chunk(9 if self.cross else 6, dim=1)  # each [B, D]
        x = x + mods[2][:, None] * self.attn(modulate(self.norm1(x), mods[0], mods[1]))  # [B, T, D]
        if self.cross:
            x = x + mods[8][:, None] * self.cross_attn(modulate(self.norm_c(x), mods[6], mods[7]),
                                                       self.norm_ctx(ctx))  # [B, T, D]
        return x + mods[5][:, None] * self.mlp(modulate(self.norm2(x), mods[3], mods[4]))  # [B, T, D]


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + LayerNorm + Linear(D, L); modulation and linear zero-initialised."""

    def __init__(self, d: int, out: int | None = None):
        super().__init__()
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(d, out or d)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x [B, T, D], c [B, D] -> Linear(adaLN-modulated LayerNorm(x)) [B, T, L]."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # [B, D] each
        return self.linear(modulate(self.norm(x), shift, scale))  # [B, T, L]


class Denoiser(nn.Module):
    """(u_t [B, T, L], t [B], cond) -> prediction [B, T, L]: input projection L -> D + learned positions,
    n_layers DiT blocks, final layer D -> L. c = t_emb + fused condition (adaLN), or c = t_emb plus
    cross-attention."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        d = cfg.d_model
        self.cross = cfg.conditioning == "cross_attention"
        self.in_proj = nn.Linear(cfg.token_dim, d)
        self.pos = nn.Parameter(torch.zeros(1, cfg.n_tokens, d))  # [1, T, D]
        self.t_embedder = TimestepEmbedder(d)
        self.cond_embedder = ConditionEmbedder(cfg)
        self.blocks = nn.ModuleList(DiTBlock(cfg, cross=self.cross) for _ in range(cfg.n_layers))
        self.final = FinalLayer(d, cfg.token_dim)

    def forward(self, u: torch.Tensor, t: torch.Tensor, cond: dict, drop: torch.Tensor) -> torch.Tensor:
        """Predict eps or v for the noisy latent tokens.

        Parameters
        ----------
        u : noisy scaled latent u_t [B, T, L].
        t : Long [B] timesteps.
        cond : condition dict (see the module docstring).
        drop : Bool [B], True = condition dropped (classifier-free guidance).

        Returns
        -------
        The prediction [B, T, L].
        """
        b = u.shape[0]
        x = self.in_proj(u) + self.pos  # [B, T, D]
        te = self.t_embedder(t)  # [B, D]
        fused, tokens = self.cond_embedder(cond, drop, b)  # [B, D], [B, K+1, D]
        c = te if self.cross else te + fused  # [B, D]
        for block in self.blocks:
            x = block(x, c, tokens if self.cross else None)  # [B, T, D]
        return self.final(x, c)  # [B, T, L]


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class LatentDiffusion(nn.Module):
    """Token autoencoder + DiT denoiser + noise schedule; see the module docstring.

    Latent spaces: ``encode`` gives z [B, T, D]; the diffusion runs on u = (z - latent_shift) / latent_scale
    (buffers [T, D] and [], set by :meth:`set_latent_scale` or, end to end, by running batch statistics).
    """

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        if not isinstance(config, DiffusionConfig):
            raise InputError(f"LatentDiffusion: expected a DiffusionConfig, got {type(config).__name__}")
        self.config = cfg = config
        g, t, d, h = cfg.n_genes, cfg.n_tokens, cfg.token_dim, cfg.ae_hidden
        n_enc = t * d * (2 if cfg.kl_weight > 0 else 1)  # variational: mean and log-variance
        n_dec = g * (2 if cfg.likelihood == "zinb" else 1)  # zinb: rates and zero-inflation logits
        self.encoder = nn.Sequential(nn.Linear(g, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, n_enc))
        self.token_pos = nn.Parameter(torch.zeros(1, t, d))  # [1, T, L] learned token positions
        self.decoder = nn.Sequential(nn.Linear(t * d, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, n_dec))
        if cfg.counts:
            self.log_theta = nn.Parameter(torch.zeros(g))  # [G] gene-wise NB inverse dispersion, log scale
        self.denoiser = Denoiser(cfg)
        self.schedule = NoiseSchedule(cfg.schedule, cfg.n_timesteps)
        self.register_buffer("latent_shift", torch.zeros(t, d))  # [T, L]
        self.register_buffer("latent_scale", torch.ones(()))  # []
        self.register_buffer("latent_clip", torch.full((), math.inf))  # [] max |u| seen; bounds x0_hat in sampling
        self.register_buffer("latent_fitted", torch.zeros((), dtype=torch.bool))
        self.latent_momentum = 0.1  # running statistics, end to end
        self.initialize_weights()

    # ---------------------------------------------------------------- initialisation
    def initialize_weights(self) -> None:
        """DiT initialisation: xavier-uniform linears with zero bias, N(0, 0.02) embeddings and positions, and
        the deliberate zero-inits: every adaLN modulation and the final linear layer (adaLN-Zero)."""
        def basic(m: nn.Module) -> None:
            """Xavier-uniform weight and zero bias for a Linear; N(0, 0.02) weight for an Embedding."""
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        self.apply(basic)
        for p in (self.token_pos, self.denoiser.pos):
            nn.init.normal_(p, std=0.02)
        for lin in self.denoiser.t_embedder.mlp:
            if isinstance(lin, nn.Linear):
                nn.init.normal_(lin.weight, std=0.02)
        ce = self.denoiser.cond_embedder
        for name in ("set", "continuous"):
            if hasattr(ce, name):
                nn.init.normal_(getattr(ce, name).null, std=0.02)
        if hasattr(ce, "set"):
            nn.init.normal_(ce.set.empty, std=0.02)
            if ce.set.n_features:
                nn.init.normal_(ce.set.perturbed, std=0.02)
                nn.init.zeros_(ce.set.feature_proj.weight)
        if hasattr(ce, "kind_emb"):
            nn.init.normal_(ce.kind_emb, std=0.02)
        for block in self.denoiser.blocks:  # adaLN-Zero
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for lin in (self.denoiser.final.adaLN_modulation[-1], self.denoiser.final.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # ---------------------------------------------------------------- validation
    def _check_x(self, x: torch.Tensor, name: str = "x") -> None:
        g = self.config.n_genes
        if not torch.is_tensor(x) or x.ndim != 2 or x.shape[1] != g:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise InputError(f"{name}: expected expression [B, n_genes={g}], got {shape}")
        if not x.is_floating_point():
            raise InputError(f"{name}: expected a floating-point tensor, got {x.dtype}")

    def _check_z(self, z: torch.Tensor, name: str) -> None:
        t, d = self.config.n_tokens, self.config.token_dim
        if not torch.is_tensor(z) or z.ndim != 3 or tuple(z.shape[1:]) != (t, d):
            shape = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
            raise InputError(f"{name}: expected latent tokens [B, n_tokens={t}, latent_dim={d}], got {shape}")

    def check_cond(self, cond: dict | None, b: int) -> dict:
        """Validate ``cond`` for batch size ``b`` (rows of size 1 are broadcast) and move it to the model's
        device. Returns the dict of the configured kinds. Raises InputError naming the key."""
        cfg = self.config
        dev = self.latent_scale.device
        cond = {} if cond is None else cond
        if not isinstance(cond, dict):
            raise InputError(f"cond: expected a dict of tensors, got {type(cond).__name__}")
        out: dict[str, torch.Tensor] = {}

        def get(key: str, why: str) -> torch.Tensor:
            """``cond[key]`` as a tensor on the model's device with ``b`` rows (a single row broadcast).

            Raises InputError if the key is missing (``why`` names the config field that needs it) or the row count
            is not ``b``.
            """
            if key not in cond:
                raise InputError(f"cond: missing key {key!r} (config {why}); expected it for every cell")
            v = torch.as_tensor(cond[key]).to(dev)
            if v.ndim >= 1 and v.shape[0] == 1 and b != 1:
                v = v.expand(b, *v.shape[1:])
            if v.ndim == 0 or v.shape[0] != b:
                raise InputError(f"cond[{key!r}]: expected {b} rows (the batch size), got shape {tuple(v.shape)}")
            return v

        if cfg.n_cell_types:
            v = get("cell_type", f"n_cell_types={cfg.n_cell_types}")
            if v.ndim != 1 or v.is_floating_point() or v.dtype == torch.bool:
                raise InputError(f"cond['cell_type']: expected integer [B], got {v.dtype} {tuple(v.shape)}")
            if v.numel() and (int(v.min()) < -1 or int(v.max()) >= cfg.n_cell_types):
                raise InputError(f"cond['cell_type']: expected values in -1..{cfg.n_cell_types - 1}, "
                                 f"got {int(v.min())}..{int(v.max())}")
            out["cell_type"] = v.long()
        if cfg.n_set_genes:
            genes = get("set_genes", f"n_set_genes={cfg.n_set_genes}")
            mask = get("set_mask", f"n_set_genes={cfg.n_set_genes}")
            if genes.ndim != 2 or genes.is_floating_point() or genes.dtype == torch.bool:
                raise InputError(f"cond['set_genes']: expected integer [B, S], got {genes.dtype} "
                                 f"{tuple(genes.shape)}")
            if mask.shape != genes.shape:
                raise InputError(f"cond['set_mask']: expected the shape of set_genes {tuple(genes.shape)}, "
                                 f"got {tuple(mask.shape)}")
            if mask.is_floating_point():
                raise InputError(f"cond['set_mask']: expected a bool tensor, got {mask.dtype}")
            mask = mask.bool()
            members = genes[mask]
            if members.numel() and (int(members.min()) < 0 or int(members.max()) >= cfg.n_set_genes):
                raise InputError(f"cond['set_genes']: expected members in 0..{cfg.n_set_genes - 1}, "
                                 f"got {int(members.min())}..{int(members.max())}")
            out["set_genes"], out["set_mask"] = genes.long(), mask
        if cfg.n_continuous:
            v = get("continuous", f"n_continuous={cfg.n_continuous}")
            if v.ndim != 2 or v.shape[1] != cfg.n_continuous:
                raise InputError(f"cond['continuous']: expected [B, n_continuous={cfg.n_continuous}], "
                                 f"got {tuple(v.shape)}")
            if not torch.isfinite(v.float()).all():
                raise InputError("cond['continuous']: expected finite values, found NaN or inf")
            out["continuous"] = v.to(self.latent_scale.dtype)
        return out

    def _drop(self, drop: torch.Tensor | bool | None, b: int, device) -> torch.Tensor:
        if drop is None:
            return torch.zeros(b, dtype=torch.bool, device=device)
        drop = torch.as_tensor(drop, device=device)
        if drop.ndim == 0:
            drop = drop.expand(b)
        if drop.shape != (b,):
            raise InputError(f"drop: expected Bool [B={b}], got shape {tuple(drop.shape)}")
        return drop.bool()

    # ---------------------------------------------------------------- autoencoder
    def encode_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Expression x [B, G] -> (mean [B, T, L], log-variance [B, T, L] or None when not variational)."""
        self._check_x(x)
        b, t, d = x.shape[0], self.config.n_tokens, self.config.token_dim
        h = self.encoder(x)
        if self.config.kl_weight > 0:
            mu, logvar = h.view(b, 2, t, d).unbind(1)
            return mu + self.token_pos, logvar.clamp(-12.0, 8.0)  # [B, T, L] each
        return h.view(b, t, d) + self.token_pos, None  # [B, T, L]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Expression x [B, G] -> latent tokens z [B, T, L] (MLP, reshape, + token positions; the posterior
        mean when variational)."""
        return self.encode_posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent tokens z [B, T, L] -> the decoder's output [B, G]: gaussian: expression; nb/zinb: the
        expected fraction of a cell's counts per gene (rho, softmax over genes; rows sum to 1)."""
        self._check_z(z, "z")
        h = self.decoder(z.flatten(1))  # [B, G] or [B, 2G]
        if not self.config.counts:
            return h
        return torch.softmax(h[:, : self.config.n_genes].float(), -1)  # [B, G]

    def count_parameters(self, z: torch.Tensor, library: torch.Tensor) -> dict[str, torch.Tensor]:
        """NB/ZINB parameters of a cell's counts given latent z [B, T, L] and library size [B] (total counts):
        ``mu`` [B, G] = library * softmax(decoder(z)), ``theta`` [G] inverse dispersion (var = mu + mu^2/theta),
        ``pi_logits`` [B, G] (zinb: logit of the structural-zero probability; nb: absent). The scVI observation
        model (Lopez et al. 2018, Methods). Raises InputError for a gaussian model or a bad library."""
        if not self.config.counts:
            raise InputError("count_parameters: the model's likelihood is gaussian (no count model)")
        self._check_z(z, "z")
        library = torch.as_tensor(library, device=z.device, dtype=torch.float32).reshape(-1)
        if library.shape[0] != z.shape[0] or not bool((library > 0).all()):
            raise InputError(f"library: expected [B={z.shape[0]}] positive total counts, got {tuple(library.shape)}")
        h = self.decoder(z.flatten(1)).float()
        g = self.config.n_genes
        out = {"mu": library[:, None] * torch.softmax(h[:, :g], -1), "theta": self.log_theta.float().exp()}
        if self.config.likelihood == "zinb":
            out["pi_logits"] = h[:, g:]
        return out

    @torch.no_grad()
    def init_dispersion(self, counts: torch.Tensor) -> None:
        """Start the gene-wise inverse dispersion at its method-of-moments estimate on training counts [N, G]:
        theta_g = m_g^2 / (v_g - m_g) of the counts scaled to the median library size, clipped to [0.01, 100]
        (genes without overdispersion get 100). Raises InputError for a gaussian model."""
        if not self.config.counts:
            raise InputError("init_dispersion: the model's likelihood is gaussian (no dispersion)")
        c = torch.as_tensor(counts).double()
        lib = c.sum(1, keepdim=True).clamp_min(1.0)
        c = c / lib * lib.median()
        m, v = c.mean(0), c.var(0)
        theta = torch.where(v > m, m.pow(2) / (v - m).clamp_min(1e-12), torch.full_like(m, 100.0))
        self.log_theta.copy_(theta.clamp(0.01, 100.0).log().to(self.log_theta))

    def count_log_likelihood(self, counts: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        r"""log p(counts) [B] summed over genes under :meth:`count_parameters` (NB, or ZINB with a point mass at 0).

        NB: :math:`\log\Gamma(x+	heta) - \log\Gamma(	heta) - \log x! + 	heta\lograc{	heta}{	heta+\mu} +
        x\lograc{\mu}{	heta+\mu}`; ZINB: :math:`\log(\pi + (1-\pi)NB(0))` at x = 0 and
        :math:`\log(1-\pi) + \log NB(x)` otherwise (scVI's ``ZeroInflatedNegativeBinomial``)."""
        x = counts.float()
        mu, theta = params["mu"], params["theta"][None]
        eps = 1e-8
        log_t_mu = torch.log(theta + mu + eps)
        nb = (torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)
              + theta * (torch.log(theta + eps) - log_t_mu) + x * (torch.log(mu + eps) - log_t_mu))  # [B, G]
        if "pi_logits" not in params:
            return nb.sum(-1)
        pi = params["pi_logits"]
        nb_zero = theta * (torch.log(theta + eps) - log_t_mu)  # log NB(0)
        zero = torch.logaddexp(pi, nb_zero) - F.softplus(pi)
        return torch.where(x < 0.5, zero, nb - F.softplus(pi)).sum(-1)  # [B]

    @torch.no_grad()
    def sample_counts(self, z: torch.Tensor, library: torch.Tensor, rng) -> torch.Tensor:
        """Counts [B, G] (float32 whole numbers) drawn from the NB/ZINB of :meth:`count_parameters`, with the
        numpy Generator ``rng``: Gamma-Poisson, NB(mu, theta) = Poisson(mu / theta * Gamma(theta, 1)), the
        Poisson drawn by inversion (``scipy.stats.poisson.ppf`` of a uniform). The random numbers used depend
        only on the shape [B, G], theta and ``rng``'s state, not on mu: two calls from equal states with
        different z are common random numbers (their difference is the decoders' difference, not noise)."""
        from scipy.stats import poisson

        p = {k: v.double().cpu().numpy() for k, v in self.count_parameters(z, library).items()}
        theta = np.broadcast_to(p["theta"][None], p["mu"].shape)
        lam = rng.standard_gamma(theta) * p["mu"] / theta  # [B, G]
        u = rng.random(lam.shape)
        x = np.where(lam > 0, poisson.ppf(u, np.maximum(lam, 1e-300)), 0.0).astype("float32")
        if "pi_logits" in p:
            x[rng.random(x.shape) < 1.0 / (1.0 + np.exp(-p["pi_logits"]))] = 0.0
        return torch.from_numpy(x)

    def to_diffusion_space(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, T, D] -> u = (z - latent_shift) / latent_scale."""
        return (z - self.latent_shift) / self.latent_scale  # [B, T, D]

    def from_diffusion_space(self, u: torch.Tensor) -> torch.Tensor:
        """u [B, T, D] -> z = u latent_scale + latent_shift."""
        return u * self.latent_scale + self.latent_shift  # [B, T, D]

    @torch.no_grad()
    def set_latent_scale(self, x: torch.Tensor, batch_size: int = 4096) -> None:
        """After the autoencoder phase: latent_shift = mean of encode(x) over cells [T, D], latent_scale =
        std of encode(x) - latent_shift over all entries (one scalar). Uses eval mode; marks the latent fitted."""
        self._check_x(x)
        if x.shape[0] < 2:
            raise InputError(f"x: expected at least 2 cells to estimate the latent scale, got {x.shape[0]}")
        was = self.training
        self.eval()
        dev = self.latent_scale.device
        z = torch.cat([self.encode(x[i:i + batch_size].to(dev)).float() for i in range(0, x.shape[0], batch_size)])
        self.train(was)
        mu = z.mean(0)  # [T, D]
        sd = (z - mu).pow(2).mean().sqrt().clamp_min(1e-8)  # []
        self.latent_shift.copy_(mu)
        self.latent_scale.copy_(sd)
        self.latent_clip.copy_(((z - mu) / sd).abs().max())
        self.latent_fitted.fill_(True)

    # ---------------------------------------------------------------- denoiser
    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: dict,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        """Denoiser prediction (eps or v) [B, T, D] for u_t = z_t [B, T, D] (diffusion space) at t Long [B].

        drop: Bool [B] (or a bool for all), True = every condition replaced by its "null" value."""
        self._check_z(z_t, "z_t")
        b = z_t.shape[0]
        t = torch.as_tensor(t, device=z_t.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,) or t.is_floating_point():
            raise InputError(f"t: expected integer timesteps [B={b}], got {t.dtype} {tuple(t.shape)}")
        cond = self.check_cond(cond, b)
        return self.denoiser(z_t, t.long(), cond, self._drop(drop, b, z_t.device))  # [B, T, D]

    # ---------------------------------------------------------------- training
    def loss(self, x: torch.Tensor, cond: dict, phase: str, generator: torch.Generator | None = None, *,
             t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
             drop: torch.Tensor | None = None, counts: torch.Tensor | None = None,
             kl_scale: float = 1.0) -> tuple[torch.Tensor, dict]:
        """Training loss of ``phase``; returns (scalar, dict of float logs).

        ``autoencoder``: gaussian: MSE(decode(encode(x)), x); nb/zinb: the negative log-likelihood of the raw
        ``counts`` [B, G] under :meth:`count_parameters` with the observed library size (counts.sum(1)),
        divided by G; variational (``kl_weight`` > 0): z is drawn from q(z | x) when training and
        ``kl_scale`` * ``kl_weight`` * KL(q(z | x) || N(0, I)) / G is added (the beta-VAE objective, Higgins
        et al. 2017; ``kl_scale`` < 1 is a KL warm-up against posterior collapse, as scVI's).
        ``diffusion``: MSE(model(u_t, t), eps or v) with u the
        frozen (no-grad) scaled latent of x, t ~ U{0..n_timesteps-1} per sample and, when ``self.training``,
        each cell's conditions dropped with probability ``cond_dropout``. ``end_to_end``: the sum of both,
        with gradients through the encoder and the latent standardised with batch statistics (the running
        buffers are updated). Optional fixed ``t`` Long [B], ``noise`` [B, T, D], ``drop`` Bool [B] replace the
        random draws (for evaluation on a fixed set of t and noise)."""
        if phase not in PHASES:
            raise InputError(f"phase: expected one of {list(PHASES)}, got {phase!r}")
        self._check_x(x)
        b = x.shape[0]
        dev = self.latent_scale.device
        x = x.to(dev)
        logs: dict[str, float] = {}
        total = None
        if phase in ("autoencoder", "end_to_end"):
            z, recon = self._reconstruction(x, counts, generator, logs, kl_scale)  # [B, T, L], []
            total = recon
            if phase == "autoencoder":
                logs["loss"] = float(total.detach())
                return total, logs
            if self.training:
                mu = z.mean(0)  # [T, D]
                sd = (z - mu).pow(2).mean().sqrt().clamp_min(1e-8)  # [] with gradient: no scale collapse
                u0 = (z - mu) / sd  # [B, T, D]
                with torch.no_grad():
                    first = not bool(self.latent_fitted)
                    m = 1.0 if first else self.latent_momentum
                    self.latent_shift.lerp_(mu.detach().float(), m)
                    self.latent_scale.lerp_(sd.detach().float(), m)
                    amax = u0.detach().abs().max().float()
                    self.latent_clip.copy_(amax if first else torch.maximum(self.latent_clip, amax))
                    self.latent_fitted.fill_(True)
            else:
                u0 = self.to_diffusion_space(z)
        else:
            if not bool(self.latent_fitted):
                raise InputError("latent scale: not set; call set_latent_scale(x) after the autoencoder phase "
                                 "and before the diffusion phase")
            with torch.no_grad():
                u0 = self.to_diffusion_space(self.encode(x))  # [B, T, D] frozen latent
        cond = self.check_cond(cond, b)
        if t is None:
            t = torch.randint(0, self.config.n_timesteps, (b,), generator=generator,
                              device=generator.device if generator is not None else "cpu").to(dev)
        t = torch.as_tensor(t, device=dev).long()
        if t.shape != (b,) or int(t.min()) < 0 or int(t.max()) >= self.config.n_timesteps:
            raise InputError(f"t: expected [B={b}] timesteps in 0..{self.config.n_timesteps - 1}")
        if noise is None:
            noise = _randn(u0.shape, generator, dev, u0.dtype)  # [B, T, D]
        noise = noise.to(dev, u0.dtype)
        if noise.shape != u0.shape:
            raise InputError(f"noise: expected shape {tuple(u0.shape)}, got {tuple(noise.shape)}")
        if drop is None and self.training and self.config.cond_dropout > 0:
            drop = torch.rand(b, generator=generator,
                              device=generator.device if generator is not None else "cpu").to(dev) \
                < self.config.cond_dropout  # [B]
        u_t = self.schedule.q_sample(u0, t, noise)  # [B, T, D]
        target = self.schedule.target(u0, noise, t, self.config.prediction)  # [B, T, D]
        pred = self.denoiser(u_t, t, cond, self._drop(drop, b, dev))  # [B, T, D]
        diff = F.mse_loss(pred.float(), target.float())
        logs["diffusion"] = float(diff.detach())
        total = diff if total is None else total + diff
        logs["loss"] = float(total.detach())
        return total, logs

    def _reconstruction(self, x: torch.Tensor, counts: torch.Tensor | None, generator, logs: dict,
                        kl_scale: float = 1.0):
        """(z [B, T, L], reconstruction loss + weighted KL []) of the autoencoder phase; fills ``logs``."""
        cfg = self.config
        mean, logvar = self.encode_posterior(x)  # [B, T, L]
        z = mean
        if logvar is not None and self.training:
            z = mean + (0.5 * logvar).exp() * _randn(mean.shape, generator, mean.device, mean.dtype)
        if cfg.counts:
            if counts is None:
                raise InputError(f"counts: the {cfg.likelihood} autoencoder needs the raw counts [B, G] of x")
            counts = torch.as_tensor(counts, device=x.device).float()
            if counts.shape != x.shape:
                raise InputError(f"counts: expected the shape of x {tuple(x.shape)}, got {tuple(counts.shape)}")
            params = self.count_parameters(z, counts.sum(1).clamp_min(1.0))
            recon = -self.count_log_likelihood(counts, params).mean() / cfg.n_genes
        else:
            recon = F.mse_loss(self.decode(z), x)
        logs["recon"] = float(recon.detach())
        if logvar is not None:
            m = mean - self.token_pos
            kl = 0.5 * (m.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean() / cfg.n_genes
            logs["kl"] = float(kl.detach())
            recon = recon + kl_scale * cfg.kl_weight * kl
        return z, recon

    def init_set_gene_embeddings(self, vectors: torch.Tensor, known: torch.Tensor | None = None) -> None:
        """Initialise the perturbation-set gene embeddings from ``vectors`` Float [n_set_genes, E] (any E);
        rows with ``known`` Bool [n_set_genes] False keep their init (see
        :meth:`SetEmbedder.init_gene_embeddings`). Raises InputError if the config has no set condition."""
        if not self.config.n_set_genes:
            raise InputError("init_set_gene_embeddings: config.n_set_genes is 0 (no perturbation-set condition)")
        self.denoiser.cond_embedder.set.init_gene_embeddings(vectors, known)

    def parameters_for(self, phase: str) -> list[nn.Parameter]:
        """Parameters trained in ``phase``: autoencoder = encoder + token positions + decoder; diffusion =
        denoiser (with the condition embedders); end_to_end = all."""
        if phase not in PHASES:
            raise InputError(f"phase: expected one of {list(PHASES)}, got {phase!r}")
        ae = [*self.encoder.parameters(), self.token_pos, *self.decoder.parameters()]
        if self.config.counts:
            ae.append(self.log_theta)
        if phase == "autoencoder":
            return ae
        if phase == "diffusion":
            return list(self.denoiser.parameters())
        return list(self.parameters())

    def param_groups(self, phase: str, weight_decay: float) -> list[dict]:
        """AdamW groups (nanoGPT): matrices decayed, biases/norms/embedding-vectors (dim < 2) not."""
        params = [p for p in self.parameters_for(phase) if p.requires_grad]
        return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]

    # ---------------------------------------------------------------- sampling
    def _guided(self, u: torch.Tensor, t: torch.Tensor, cond: dict, scale: float) -> torch.Tensor:
        """Prediction with classifier-free guidance: p_null + s (p_cond - p_null); s = 1: p_cond only."""
        b = u.shape[0]
        keep = torch.zeros(b, dtype=torch.bool, device=u.device)
        if scale == 1.0 or not self.denoiser.cond_embedder.kinds:
            return self.denoiser(u, t, cond, keep)  # [B, T, D]
        both = {k: torch.cat([v, v]) for k, v in cond.items()}
        p = self.denoiser(torch.cat([u, u]), torch.cat([t, t]), both, torch.cat([keep, ~keep]))  # [2B, T, D]
        p_c, p_u = p[:b], p[b:]
        return p_u + scale * (p_c - p_u)  # [B, T, D]

    @torch.no_grad()
    def sample_latent(self, cond: dict, n: int, method: str = "ddim", steps: int = 50, eta: float = 0.0,
                      guidance_scale: float = 1.0, generator: torch.Generator | None = None,
                      clip_x0: bool = True) -> torch.Tensor:
        """Samples u_0 [n, T, D] in diffusion space (see :meth:`sample`).

        ddpm: u_{t-1} = c1_t x0_hat + c2_t u_t + sqrt(beta~_t) z for t = T-1..0 (no noise at t = 0).
        ddim: u_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z over the
        strided timesteps (abar_prev = 1 after the last). Both draw one noise tensor per step that adds noise.
        ``clip_x0``: x0_hat is clamped to +-latent_clip (the largest |u| of the fitted latents; no-op before
        fitting) and, for DDIM, eps_hat recomputed from it, the latent analogue of the [-1, 1] clipping of
        image diffusion: with eps-prediction x0_hat = (u - sqrt(1-abar) eps_hat)/sqrt(abar) amplifies the
        error of eps_hat by 1/sqrt(abar_t) (~2e4 at the last cosine step)."""
        if method not in SAMPLERS:
            raise InputError(f"method: expected one of {list(SAMPLERS)}, got {method!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"n: expected a positive number of cells, got {n!r}")
        nt = self.config.n_timesteps
        if method == "ddim" and not (isinstance(steps, int) and 1 <= steps <= nt):
            raise InputError(f"steps: expected an integer in 1..n_timesteps={nt}, got {steps!r}")
        if not eta >= 0:
            raise InputError(f"eta: expected a number >= 0, got {eta!r}")
        cond = self.check_cond(cond, n)
        dev = self.latent_scale.device
        dtype = self.latent_scale.dtype
        sch, pred_kind = self.schedule, self.config.prediction
        c = float(self.latent_clip)
        clip = bool(clip_x0) and math.isfinite(c)
        u = _randn((n, self.config.n_tokens, self.config.token_dim), generator, dev, dtype)  # [n, T, L] u_T
        if method == "ddpm":
            for ti in range(nt - 1, -1, -1):
                t = torch.full((n,), ti, dtype=torch.long, device=dev)  # [n]
                x0, _ = sch.predict_x0_eps(u, t, self._guided(u, t, cond, guidance_scale), pred_kind)
                if clip:
                    x0 = x0.clamp(-c, c)  # [n, T, D]
                mean = _extract(sch.posterior_mean_coef1, t, u) * x0 + _extract(sch.posterior_mean_coef2, t, u) * u
                if ti > 0:
                    z = _randn(u.shape, generator, dev, dtype)  # [n, T, D]
                    u = mean + _extract(sch.posterior_variance, t, u).sqrt() * z
                else:
                    u = mean
            return u
        ts = sch.ddim_timesteps(steps).tolist()
        abar = sch.alphas_cumprod
        for i, ti in enumerate(ts):
            t = torch.full((n,), ti, dtype=torch.long, device=dev)  # [n]
            x0, eps = sch.predict_x0_eps(u, t, self._guided(u, t, cond, guidance_scale), pred_kind)
            a_t = float(abar[ti])
            if clip:
                x0 = x0.clamp(-c, c)  # [n, T, D]
                eps = (u - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)  # [n, T, D] consistent with clipped x0
            a_prev = float(abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            sigma = eta * math.sqrt(max((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev), 0.0))
            u = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)) * eps  # [n, T, D]
            if sigma > 0:
                u = u + sigma * _randn(u.shape, generator, dev, dtype)
        return u

    @torch.no_grad()
    def sample(self, cond: dict, n: int, method: str = "ddim", steps: int = 50, eta: float = 0.0,
               guidance_scale: float = 1.0, generator: torch.Generator | None = None,
               clip_x0: bool = True) -> torch.Tensor:
        """Generated expression [n, G] for conditions ``cond`` (rows of size 1 are broadcast to n).

        ``ddpm``: ancestral sampling over all n_timesteps (``steps`` ignored); ``ddim``: ``steps`` strided
        steps, ``eta`` 0 deterministic, 1 = DDPM-like noise. Classifier-free guidance with
        ``guidance_scale`` s: pred = pred_uncond + s (pred_cond - pred_uncond); s = 1 means no guidance.
        nb/zinb models return rho, the expected fraction of counts per gene: draw counts with
        ``sample_counts(from_diffusion_space(sample_latent(...)), library, rng)``."""
        u = self.sample_latent(cond, n, method, steps, eta, guidance_scale, generator, clip_x0)  # [n, T, L]
        return self.decode(self.from_diffusion_space(u))  # [n, G]

    def set_gene_features(self, features: torch.Tensor) -> None:
        """Fix the set-gene features [n_set_genes, n_set_features] (see :meth:`SetEmbedder.set_gene_features`)."""
        if not self.config.n_set_genes:
            raise InputError("set_gene_features: config.n_set_genes is 0 (no perturbation-set condition)")
        self.denoiser.cond_embedder.set.set_gene_features(features)
