"""Model core of the latent-token diffusion transformer (cellgraph.models.diffusion), issue 7."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cellgraph.errors import InputError
from cellgraph.models.diffusion import (DiffusionConfig, DiTBlock, LatentDiffusion, NoiseSchedule, SetEmbedder)

ROOT = Path(__file__).resolve().parents[1]
PAPALEXI = ROOT / "resources/perturbation/papalexi2021_thp1_eccite_lowmoi.h5ad"


@pytest.fixture(autouse=True)
def one_thread():
    """The machine is shared: one intra-op thread is several times faster than two oversubscribed ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_config(**kw) -> DiffusionConfig:
    base = dict(n_genes=30, n_tokens=4, d_model=16, n_layers=2, n_heads=2, ae_hidden=32, n_cell_types=3,
                n_set_genes=7, n_continuous=2, n_timesteps=100, mlp_ratio=2.0)
    return DiffusionConfig(**{**base, **kw})


def make_cond(b: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    genes = torch.randint(0, 7, (b, 3), generator=g)
    mask = torch.rand(b, 3, generator=g) < 0.6
    mask[0] = False  # an empty set
    return {"cell_type": torch.randint(-1, 3, (b,), generator=g), "set_genes": genes, "set_mask": mask,
            "continuous": torch.randn(b, 2, generator=g)}


def randomize_(model: nn.Module, std: float = 0.2) -> nn.Module:
    """Give every parameter (including the zero-initialised ones) random values, so outputs depend on inputs."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


# --------------------------------------------------------------------------------------------------
# Shapes and initialisation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conditioning", ["adaln", "cross_attention"])
def test_shapes_through_encoder_denoiser_decoder(conditioning):
    cfg = small_config(conditioning=conditioning)
    model = LatentDiffusion(cfg)
    b = 5
    x = torch.rand(b, cfg.n_genes)
    cond = make_cond(b)
    z = model.encode(x)
    assert z.shape == (b, cfg.n_tokens, cfg.d_model)
    assert model.decode(z).shape == (b, cfg.n_genes)
    pred = model(z, torch.randint(0, cfg.n_timesteps, (b,)), cond)
    assert pred.shape == (b, cfg.n_tokens, cfg.d_model)
    assert torch.equal(pred, torch.zeros_like(pred))  # adaLN-Zero + zero final layer: prediction 0 at init
    randomize_(model)
    pred = model(z, torch.randint(0, cfg.n_timesteps, (b,)), cond)
    assert pred.shape == (b, cfg.n_tokens, cfg.d_model) and pred.abs().sum() > 0
    model.set_latent_scale(x)
    for phase in ("autoencoder", "diffusion", "end_to_end"):
        loss, logs = model.loss(x, cond, phase)
        loss.backward()
        value = float(loss.detach())
        assert loss.ndim == 0 and math.isfinite(value) and logs["loss"] == pytest.approx(value)
    out = model.sample(cond, b, method="ddim", steps=5, guidance_scale=2.0)
    assert out.shape == (b, cfg.n_genes) and torch.isfinite(out).all()
    one = {k: v[:1] for k, v in cond.items()}  # one row is broadcast to n
    assert model.sample(one, 3, method="ddpm").shape == (3, cfg.n_genes)


@pytest.mark.parametrize("cross", [False, True])
def test_adaln_zero_blocks_are_identity_at_init(cross):
    cfg = small_config(conditioning="cross_attention" if cross else "adaln")
    model = LatentDiffusion(cfg)
    x = torch.randn(4, cfg.n_tokens, cfg.d_model)
    c = torch.randn(4, cfg.d_model)
    ctx = torch.randn(4, 3, cfg.d_model) if cross else None
    for block in model.denoiser.blocks:
        assert isinstance(block, DiTBlock)
        assert torch.equal(block(x, c, ctx), x)
    # the same block with a non-zero modulation is not the identity (the check can fail)
    block = model.denoiser.blocks[0]
    with torch.no_grad():
        block.adaLN_modulation[-1].bias.fill_(0.5)
    assert not torch.allclose(block(x, c, ctx), x)


# --------------------------------------------------------------------------------------------------
# Noise schedule
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_forward_noising_has_scheduled_mean_and_variance(schedule):
    sch = NoiseSchedule(schedule, 1000)
    abar = sch.alphas_cumprod
    # the schedule itself, from its definition
    if schedule == "linear":
        assert float(sch.betas[0]) == pytest.approx(1e-4) and float(sch.betas[-1]) == pytest.approx(0.02)
        assert torch.allclose(abar, torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0))
    else:
        f = lambda u: math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        for t in (0, 10, 500, 900, 990):
            assert float(abar[t]) == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert bool((sch.betas > 0).all() and (sch.betas < 1).all() and (abar.diff() < 0).all())
    # q(x_t | x_0): Monte Carlo mean and variance against sqrt(abar) x0 and 1 - abar
    n = 20000
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([2.0, -1.0, 0.5])
    for ti in (0, 100, 500, 900, 999):
        t = torch.full((n,), ti)
        xt = sch.q_sample(x0.expand(n, 3), t, torch.randn(n, 3, generator=g))  # [n, 3]
        a = float(abar[ti])
        sd = math.sqrt(1 - a)
        assert torch.allclose(xt.mean(0), math.sqrt(a) * x0, atol=5 * sd / math.sqrt(n) + 1e-6)
        assert torch.allclose(xt.var(0), torch.full((3,), 1 - a), rtol=5 * math.sqrt(2 / n), atol=1e-7)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_v_and_eps_prediction_give_the_same_x0_when_exact(schedule):
    sch = NoiseSchedule(schedule, 1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(64, 4, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 4, 8, generator=g, dtype=torch.float64)
    t = torch.linspace(0, 999, 64).long()
    xt = sch.q_sample(x0, t, eps)
    v = sch.target(x0, eps, t, "v")
    assert torch.equal(sch.target(x0, eps, t, "eps"), eps)
    x0_e, eps_e = sch.predict_x0_eps(xt, t, eps, "eps")  # an exact eps-model
    x0_v, eps_v = sch.predict_x0_eps(xt, t, v, "v")  # an exact v-model
    assert torch.allclose(x0_v, x0, atol=1e-10) and torch.allclose(eps_v, eps, atol=1e-10)
    assert torch.allclose(x0_e, x0, atol=1e-6) and torch.allclose(x0_e, x0_v, atol=1e-6)
    # a wrong conversion would be caught: v read as eps gives another x0
    assert not torch.allclose(sch.predict_x0_eps(xt, t, v, "eps")[0], x0, atol=1e-3)


# --------------------------------------------------------------------------------------------------
# Condition embedders and dropout
# --------------------------------------------------------------------------------------------------


def test_set_embedder_is_order_invariant_and_handles_the_empty_set():
    torch.manual_seed(0)
    emb = SetEmbedder(n_genes=10, d=16, n_layers=2, n_heads=2, mlp_ratio=2.0, dropout=0.0).eval()
    nn.init.normal_(emb.empty, std=0.02)
    genes = torch.tensor([[3, 5, 7, 0], [2, 9, 0, 0], [0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]).bool()
    # the same sets, members permuted and padding moved (padding holds arbitrary ids)
    genes_p = torch.tensor([[0, 7, 3, 5], [4, 4, 9, 2], [6, 1, 2, 3]])
    mask_p = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]]).bool()
    keep = torch.zeros(3, dtype=torch.bool)
    out, out_p = emb(genes, mask, keep), emb(genes_p, mask_p, keep)  # [3, 16]
    assert torch.allclose(out, out_p, atol=1e-5)
    assert not torch.allclose(out[0], out[1], atol=1e-3)  # different sets differ
    assert torch.isfinite(out).all()
    assert torch.allclose(out[2], emb.empty) and not torch.allclose(out[2], out[0], atol=1e-3)
    # an empty set with no columns at all, and no NaN in gradients through empty rows
    out0 = emb(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.bool), keep[:2])
    assert torch.allclose(out0, emb.empty.expand(2, -1))
    emb.train()
    emb(genes, mask, keep).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in emb.parameters() if p.grad is not None)
    assert emb.empty.grad is not None and emb.empty.grad.abs().sum() > 0


def test_condition_dropout_really_drops():
    cfg = small_config(cond_dropout=1.0)
    model = randomize_(LatentDiffusion(cfg))
    b = 6
    u = torch.randn(b, cfg.n_tokens, cfg.d_model)
    t = torch.randint(0, cfg.n_timesteps, (b,))
    cond_a, cond_b = make_cond(b, seed=1), make_cond(b, seed=2)
    drop = torch.ones(b, dtype=torch.bool)
    model.eval()
    assert torch.allclose(model(u, t, cond_a, drop), model(u, t, cond_b, drop))  # independent of cond
    assert not torch.allclose(model(u, t, cond_a), model(u, t, cond_b), atol=1e-4)  # but it matters otherwise
    # each kind on its own is dropped
    for key in ("cell_type", "continuous"):
        other = dict(cond_a, **{key: cond_b[key]})
        assert not torch.allclose(model(u, t, cond_a), model(u, t, other), atol=1e-5)
        assert torch.allclose(model(u, t, cond_a, drop), model(u, t, other, drop))
    # cond_dropout = 1 in training mode: the loss equals the unconditional one
    x = torch.rand(b, cfg.n_genes)
    model.set_latent_scale(x)
    noise = torch.randn(b, cfg.n_tokens, cfg.d_model)
    uncond, _ = model.loss(x, cond_b, "diffusion", t=t, noise=noise, drop=drop)
    model.train()
    trained, _ = model.loss(x, cond_a, "diffusion", t=t, noise=noise)
    assert float(trained.detach()) == pytest.approx(float(uncond.detach()), rel=1e-6)
    model.config.cond_dropout = 0.0
    kept, _ = model.loss(x, cond_a, "diffusion", t=t, noise=noise)
    assert abs(float(kept.detach()) - float(uncond.detach())) > 1e-4


def test_guidance_scale_combines_conditional_and_unconditional():
    cfg = small_config()
    model = randomize_(LatentDiffusion(cfg)).eval()
    b = 4
    u, t, cond = torch.randn(b, cfg.n_tokens, cfg.d_model), torch.randint(0, 100, (b,)), make_cond(b)
    c = model.check_cond(cond, b)
    p_c = model(u, t, cond)
    p_u = model(u, t, cond, torch.ones(b, dtype=torch.bool))
    assert torch.allclose(model._guided(u, t, c, 1.0), p_c, atol=1e-5)
    assert torch.allclose(model._guided(u, t, c, 0.0), p_u, atol=1e-5)
    assert torch.allclose(model._guided(u, t, c, 3.0), p_u + 3 * (p_c - p_u), atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Training on real data
# --------------------------------------------------------------------------------------------------


def papalexi_batch(n: int = 64):
    """n cells of the real Papalexi ECCITE-seq data (299 genes), log1p(normalize_total(1e4)), with sets."""
    import anndata as ad
    import scanpy as sc

    if not PAPALEXI.exists():
        pytest.skip(f"{PAPALEXI} not present")
    a = ad.read_h5ad(PAPALEXI)
    idx = np.sort(np.random.default_rng(0).choice(a.n_obs, n, replace=False))
    a = a[idx].copy()
    n_threads = torch.get_num_threads()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    torch.set_num_threads(n_threads)  # normalize_total (numba, shared OpenMP runtime) resets torch's thread count
    x = torch.tensor(a.X.toarray(), dtype=torch.float32)
    pert = a.obs["perturbation"].astype(str).to_numpy()
    vocab = {p: i for i, p in enumerate(sorted(set(pert) - {"NT"}))}
    cond = {"set_genes": torch.tensor([[vocab.get(p, 0)] for p in pert]),
            "set_mask": torch.tensor([[p != "NT"] for p in pert])}
    return x, cond, len(vocab)


def test_training_lowers_the_denoising_loss_on_a_real_batch():
    torch.manual_seed(0)
    x, cond, n_sets = papalexi_batch()
    assert x.shape == (64, 299)
    cfg = DiffusionConfig.preset("demo", n_genes=299, n_set_genes=n_sets, n_tokens=4, d_model=32, ae_hidden=128)
    model = LatentDiffusion(cfg)
    g = torch.Generator().manual_seed(1)
    t_fix = torch.randint(0, cfg.n_timesteps, (64,), generator=g)
    noise_fix = torch.randn(64, cfg.n_tokens, cfg.d_model, generator=g)

    recon0 = float(model.loss(x, cond, "autoencoder")[0].detach())
    opt = torch.optim.AdamW(model.param_groups("autoencoder", 0.01), lr=2e-3)
    for _ in range(200):
        loss, _ = model.loss(x, cond, "autoencoder")
        opt.zero_grad()
        loss.backward()
        opt.step()
    recon1 = float(model.loss(x, cond, "autoencoder")[0].detach())
    assert recon1 < 0.05 * recon0

    model.zero_grad(set_to_none=True)
    model.set_latent_scale(x)
    u = model.to_diffusion_space(model.encode(x)).detach()
    assert float(u.mean()) == pytest.approx(0.0, abs=1e-4) and float(u.std()) == pytest.approx(1.0, rel=0.02)
    enc_before = [p.detach().clone() for p in model.encoder.parameters()]
    model.eval()
    start = float(model.loss(x, cond, "diffusion", t=t_fix, noise=noise_fix)[0].detach())
    model.train()
    opt = torch.optim.AdamW(model.param_groups("diffusion", 0.0), lr=2e-3)
    for _ in range(250):
        loss, _ = model.loss(x, cond, "diffusion", generator=g)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in model.encoder.parameters())  # frozen latent
        opt.step()
    model.eval()
    end = float(model.loss(x, cond, "diffusion", t=t_fix, noise=noise_fix)[0].detach())
    assert start == pytest.approx(1.0, abs=0.1)  # zero prediction at init: E[eps^2] = 1
    print(f"recon {recon0:.3f} -> {recon1:.5f}; latent std {float(model.latent_scale):.3f}; "
          f"denoising loss {start:.3f} -> {end:.3f}")
    assert end < 0.7 * start, (start, end)
    assert all(torch.equal(a, b) for a, b in zip(enc_before, model.encoder.parameters()))
    # samples decode to finite expression of the data's scale
    s = model.sample(cond, 64, steps=20, generator=g)
    assert torch.isfinite(s).all() and float(s.abs().max()) < 10 * float(x.max())


def test_end_to_end_trains_the_encoder_and_sets_the_latent_statistics():
    torch.manual_seed(0)
    cfg = small_config(training_mode="end_to_end")
    model = LatentDiffusion(cfg).train()
    x = torch.rand(16, cfg.n_genes) * 3
    loss, logs = model.loss(x, make_cond(16), "end_to_end")
    loss.backward()
    assert set(logs) == {"recon", "diffusion", "loss"}
    assert model.encoder[0].weight.grad is not None and model.encoder[0].weight.grad.abs().sum() > 0
    assert bool(model.latent_fitted) and float(model.latent_scale) != 1.0
    z = model.encode(x).detach()
    assert torch.allclose(model.latent_shift, z.mean(0), atol=1e-5)  # first batch sets the running statistics


# --------------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------------


class GaussianDenoiser(nn.Module):
    """Exact denoiser for data u_0 ~ N(m, diag(s^2)) (a = abar_t):
    E[eps | u_t] = sqrt(1-a) (u_t - sqrt(a) m) / (a s^2 + 1 - a)."""

    def __init__(self, schedule: NoiseSchedule, m: torch.Tensor, s: torch.Tensor):
        super().__init__()
        self.abar, self.m, self.s = schedule.alphas_cumprod.float(), m, s

    def forward(self, u, t, cond, drop):
        a = self.abar[t].view(-1, 1, 1)  # [n, 1, 1]
        return (1 - a).sqrt() * (u - a.sqrt() * self.m) / (a * self.s ** 2 + 1 - a)  # [n, 1, 2]


def _same_distribution(a: torch.Tensor, b: torch.Tensor, z: float = 5.0) -> bool:
    """Two-sample check per dimension: means within z SE and variances within z SE of their difference."""
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    na, nb = a.shape[0], b.shape[0]
    va, vb = a.var(0), b.var(0)
    mean_ok = ((a.mean(0) - b.mean(0)).abs() <= z * (va / na + vb / nb).sqrt()).all()
    var_ok = ((va - vb).abs() <= z * (2 * va ** 2 / (na - 1) + 2 * vb ** 2 / (nb - 1)).sqrt()).all()
    return bool(mean_ok and var_ok)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_ddim_full_steps_eta_one_matches_ddpm_in_distribution(schedule):
    cfg = DiffusionConfig(n_genes=3, n_tokens=1, d_model=2, n_layers=1, n_heads=1, ae_hidden=4, schedule=schedule)
    model = LatentDiffusion(cfg).eval()
    m, s = torch.tensor([1.5, -0.5]), torch.tensor([0.5, 1.2])
    model.denoiser = GaussianDenoiser(model.schedule, m, s)
    n = 4000
    gen = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    ddpm = model.sample_latent({}, n, method="ddpm", generator=gen(1))  # [n, 1, 2]
    ddim = model.sample_latent({}, n, method="ddim", steps=cfg.n_timesteps, eta=1.0, generator=gen(2))
    assert _same_distribution(ddpm, ddim)
    target = m + s * torch.randn(n, 1, 2, generator=gen(3))  # the data distribution itself
    assert _same_distribution(ddpm, target) and _same_distribution(ddim, target)
    # with the same noise the two implementations agree sample by sample
    ddim_same = model.sample_latent({}, n, method="ddim", steps=cfg.n_timesteps, eta=1.0, generator=gen(1))
    assert torch.allclose(ddim_same, ddpm, atol=1e-3)
    # the check has power: a denoiser for a slightly different distribution is detected
    model.denoiser = GaussianDenoiser(model.schedule, m + 0.15, s * 1.15)
    shifted = model.sample_latent({}, n, method="ddim", steps=cfg.n_timesteps, eta=1.0, generator=gen(2))
    assert not _same_distribution(ddpm, shifted)


# --------------------------------------------------------------------------------------------------
# Persistence, helpers and bad input
# --------------------------------------------------------------------------------------------------


def test_state_dict_round_trip_keeps_the_latent_scale_and_samples():
    cfg = small_config()
    model = randomize_(LatentDiffusion(cfg))
    model.set_latent_scale(torch.rand(20, cfg.n_genes))
    other = LatentDiffusion(DiffusionConfig(**model.config.to_dict()))
    other.load_state_dict(model.state_dict())
    assert float(other.latent_scale) == float(model.latent_scale) != 1.0 and bool(other.latent_fitted)
    cond = make_cond(3)
    a = model.eval().sample(cond, 3, steps=4, generator=torch.Generator().manual_seed(0))
    b = other.eval().sample(cond, 3, steps=4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a, b)


def test_init_set_gene_embeddings():
    model = LatentDiffusion(small_config())
    table = model.denoiser.cond_embedder.set.gene.weight
    before = table.detach().clone()
    vectors = torch.randn(7, 40)
    known = torch.tensor([1, 1, 1, 0, 1, 1, 1]).bool()
    model.init_set_gene_embeddings(vectors, known)
    assert torch.equal(table[3], before[3]) and not torch.allclose(table[0], before[0])
    rms = float(table[known].detach().pow(2).mean().sqrt())
    assert rms == pytest.approx(float(before.pow(2).mean().sqrt()), rel=1e-4)
    with pytest.raises(InputError, match="n_set_genes=7"):
        model.init_set_gene_embeddings(torch.randn(5, 40))


@pytest.mark.parametrize("field,value", [("schedule", "quadratic"), ("prediction", "x0"), ("conditioning", "film"),
                                         ("training_mode", "joint"), ("n_tokens", 0), ("d_model", -8),
                                         ("d_model", 15), ("n_tokens", 1 << 21), ("cond_dropout", 1.5)])
def test_bad_config_raises_input_error(field, value):
    with pytest.raises(InputError, match=field) as e:
        small_config(**{field: value})
    assert "expected" in str(e.value)


def test_bad_input_raises_input_error():
    cfg = small_config()
    model = LatentDiffusion(cfg)
    x, cond = torch.rand(4, cfg.n_genes), make_cond(4)
    z = model.encode(x)
    t = torch.zeros(4, dtype=torch.long)
    missing = {k: v for k, v in cond.items() if k != "cell_type"}
    with pytest.raises(InputError, match="'cell_type'.*n_cell_types=3"):
        model(z, t, missing)
    with pytest.raises(InputError, match="set_mask"):
        model(z, t, dict(cond, set_mask=cond["set_mask"][:, :2]))
    with pytest.raises(InputError, match="cell_type.*-1..2"):
        model(z, t, dict(cond, cell_type=torch.tensor([0, 1, 2, 3])))
    with pytest.raises(InputError, match="continuous"):
        model(z, t, dict(cond, continuous=torch.randn(4, 3)))
    with pytest.raises(InputError, match=r"cond\['cell_type'\]: expected 4 rows"):
        model(z, t, dict(cond, cell_type=torch.tensor([0, 1])))
    with pytest.raises(InputError, match="n_genes=30"):
        model.encode(torch.rand(4, 31))
    with pytest.raises(InputError, match="z_t.*n_tokens=4"):
        model(z[:, :3], t, cond)
    with pytest.raises(InputError, match="phase"):
        model.loss(x, cond, "pretrain")
    with pytest.raises(InputError, match="set_latent_scale"):
        model.loss(x, cond, "diffusion")
    with pytest.raises(InputError, match="method"):
        model.sample(cond, 4, method="euler")
    with pytest.raises(InputError, match="steps"):
        model.sample(cond, 4, steps=0)
    with pytest.raises(InputError, match="preset"):
        DiffusionConfig.preset("huge", n_genes=10)
    with pytest.raises(InputError, match="n_genes"):
        DiffusionConfig.preset("demo")
    assert DiffusionConfig.preset("paper", n_genes=10).n_tokens == 64
    assert DiffusionConfig.preset("paper", n_genes=10).d_model == 256


# --------------------------------------------------------------------------------------------------
# Count likelihood (issue 14)
# --------------------------------------------------------------------------------------------------


def test_nb_and_zinb_log_likelihood_match_torch_distributions():
    cfg = small_config(likelihood="zinb", latent_dim=3)
    model = randomize_(LatentDiffusion(cfg))
    z = torch.randn(5, cfg.n_tokens, 3)
    lib = torch.tensor([10.0, 50.0, 200.0, 1.0, 1000.0])
    p = model.count_parameters(z, lib)
    assert torch.allclose(p["mu"].sum(1), lib, rtol=1e-4)  # mean = library x softmax over genes
    x = torch.poisson(p["mu"])
    theta, mu = p["theta"][None].double(), p["mu"].double()
    nb = torch.distributions.NegativeBinomial(total_count=theta.expand_as(mu), logits=(mu / theta).log())
    want_nb = nb.log_prob(x.double())  # [B, G]
    got_nb = model.count_log_likelihood(x, {"mu": p["mu"], "theta": p["theta"]})
    assert torch.allclose(got_nb.double(), want_nb.sum(1), rtol=1e-3, atol=1e-2)
    pi = torch.sigmoid(p["pi_logits"].double())
    want = torch.where(x == 0, torch.log(pi + (1 - pi) * want_nb.exp()), torch.log(1 - pi) + want_nb).sum(1)
    assert torch.allclose(model.count_log_likelihood(x, p).double(), want, rtol=1e-3, atol=1e-2)
    with pytest.raises(InputError, match="library"):
        model.count_parameters(z, torch.zeros(5))
    with pytest.raises(InputError, match="gaussian"):
        LatentDiffusion(small_config()).count_parameters(z, lib)


def pbmc_counts(n_genes: int = 400):
    """Raw counts of the vendored PBMC demo cells over the most variable genes (of log1p CP10k)."""
    import anndata as ad

    a = ad.read_h5ad(ROOT / "resources/demo/expression/pbmc3p5k_sorted_counts.h5ad")
    c = np.asarray(a.X.toarray() if hasattr(a.X, "toarray") else a.X, np.float32)
    logn = np.log1p(1e4 * c / c.sum(1, keepdims=True).clip(1))
    genes = np.argsort(-logn.var(0))[:n_genes]
    c = c[:, genes]
    return c[c.sum(1) > 0]


def test_sampled_nb_counts_reproduce_the_real_zero_fraction_and_means_do_not():
    """Issue 14: a fitted NB decoder's sampled counts have the real zero fraction on held-out real cells;
    a decoder that returns its means (as the old MSE autoencoder did) does not."""
    torch.manual_seed(0)
    counts = pbmc_counts()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(counts))
    tr, te = idx[:2000], idx[2000:2600]
    logn = np.log1p(1e4 * counts / counts.sum(1, keepdims=True))
    mu, sd = logn[tr].mean(0), logn[tr].std(0) + 1e-3
    x = torch.from_numpy((logn - mu) / sd).float()
    c = torch.from_numpy(counts)
    cfg = DiffusionConfig.preset("demo", n_genes=counts.shape[1], likelihood="nb", latent_dim=8, kl_weight=1.0)
    model = LatentDiffusion(cfg)
    model.init_dispersion(c[tr])
    opt = torch.optim.AdamW(model.param_groups("autoencoder", 0.01), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    steps = 800
    for step in range(steps):
        i = torch.from_numpy(rng.choice(tr, 128))
        loss, logs = model.loss(x[i], {}, "autoencoder", g, counts=c[i], kl_scale=min(1.0, 2 * (step + 1) / steps))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        z = model.encode(x[te])
        lib = c[te].sum(1)
        sampled = model.sample_counts(z, lib, np.random.default_rng(1)).numpy()
        means = model.count_parameters(z, lib)["mu"].numpy()
    real = counts[te]
    zf_real, zf_sampled, zf_means = (real == 0).mean(), (sampled == 0).mean(), (means == 0).mean()
    gene_r = np.corrcoef((real == 0).mean(0), (sampled == 0).mean(0))[0, 1]
    print(f"zero fraction real {zf_real:.4f} sampled {zf_sampled:.4f} means {zf_means:.4f}; gene r {gene_r:.3f}")
    assert zf_real > 0.5  # real counts of variable genes are sparse
    assert abs(zf_sampled - zf_real) < 0.02
    assert gene_r > 0.95
    assert abs(zf_means - zf_real) > 0.5  # means are never exactly zero


def test_set_features_embed_unseen_genes_by_the_shared_path():
    cfg = small_config(n_set_features=5, n_cell_types=0, n_continuous=0)
    model = LatentDiffusion(cfg)
    emb = model.denoiser.cond_embedder.set
    assert not hasattr(emb, "gene")  # no per-gene rows to train
    feats = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    model.set_gene_features(feats)
    assert torch.equal(emb.gene_features, feats)
    e0 = emb.embed_genes(torch.arange(7))
    assert torch.allclose(e0, emb.perturbed.expand(7, -1))  # zero-initialised projection: all start equal
    with torch.no_grad():
        emb.feature_proj.weight.normal_()
    e1 = emb.embed_genes(torch.arange(7))
    assert torch.allclose(e1, emb.perturbed + emb.feature_proj(feats), atol=1e-6)
    assert not torch.allclose(e1[0], e1[1])
    sd = model.state_dict()
    assert "denoiser.cond_embedder.set.gene_features" in sd  # travels with model.pt
    with pytest.raises(InputError, match="n_set_genes, n_set_features"):
        model.set_gene_features(torch.zeros(7, 4))
    with pytest.raises(InputError, match="fixed gene features"):
        model.init_set_gene_embeddings(torch.zeros(7, 3))


def test_latent_dim_sets_the_latent_size_and_kl_makes_the_encoder_variational():
    cfg = small_config(latent_dim=3, kl_weight=1.0, likelihood="nb")
    model = LatentDiffusion(cfg).train()
    x = torch.randn(6, 30)
    mean, logvar = model.encode_posterior(x)
    assert mean.shape == logvar.shape == (6, cfg.n_tokens, 3)
    counts = torch.poisson(torch.full((6, 30), 2.0))
    loss, logs = model.loss(x, {}, "autoencoder", torch.Generator().manual_seed(0), counts=counts)
    assert "kl" in logs and logs["loss"] == pytest.approx(logs["recon"] + logs["kl"], rel=1e-5)
    with pytest.raises(InputError, match="counts"):
        model.loss(x, {}, "autoencoder")
    u = model.sample_latent(make_cond(6), 6, steps=3)
    assert u.shape == (6, cfg.n_tokens, 3)


def test_sampled_counts_are_common_random_numbers_across_decoders():
    """Equal generator states give equal draws for equal parameters, and by inversion a larger mean never
    gives fewer counts: two conditions' generated cells differ by the model, not by sampling noise."""
    cfg = small_config(likelihood="nb", latent_dim=3)
    model = randomize_(LatentDiffusion(cfg))
    z = torch.randn(40, cfg.n_tokens, 3, generator=torch.Generator().manual_seed(0))
    lib = torch.full((40,), 300.0)
    a = model.sample_counts(z, lib, np.random.default_rng(7))
    b = model.sample_counts(z, lib, np.random.default_rng(7))
    c = model.sample_counts(z, 2 * lib, np.random.default_rng(7))  # every mean doubled, same theta
    d = model.sample_counts(z, lib, np.random.default_rng(8))
    assert torch.equal(a, b)
    assert (c >= a).all() and c.sum() > 1.5 * a.sum()
    assert not torch.equal(a, d)
    mu = model.count_parameters(z, lib)["mu"]
    assert abs(float(a.mean()) - float(mu.mean())) < 0.15 * float(mu.mean())  # unbiased for the NB mean
