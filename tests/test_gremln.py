"""Tests of the GREmLN model: heat-kernel query diffusion, masking of padding, the CLS path, load()."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.linalg import expm

from cellgraph.io.shards import TokenDataset, collate
from cellgraph.models.gremln import GREmLN, GREmLNConfig, load
from cellgraph.graphs.spectral import heat_kernel_coefficients, normalized_laplacian

REPO = Path(__file__).resolve().parents[1]
HURI = REPO / "resources/demo/networks/human/HuRI_binaryPPI.tsv"


def huri_shard(lengths=(12, 9, 7, 12), n_bins=10, seed=0, n_rows=3000) -> tuple[dict, list[str]]:
    """Shard arrays (design.md section 5) of cells whose graphs are connected HuRI subgraphs.

    Each cell's genes are grown breadth-first from a random HuRI edge (so its subgraph is connected), the
    induced HuRI edges are its graph (both directions), bins are seeded random ranks in 0..n_bins.
    """
    edges = pd.read_csv(HURI, sep="\t", nrows=n_rows)
    edges = edges[edges.protein1 != edges.protein2]
    nbrs: dict[str, set[str]] = {}
    for a, b in zip(edges.protein1, edges.protein2):
        nbrs.setdefault(a, set()).add(b)
        nbrs.setdefault(b, set()).add(a)
    rng = np.random.default_rng(seed)
    cells = []
    for m in lengths:
        start = edges.iloc[int(rng.integers(len(edges)))]
        genes, frontier = [start.protein1, start.protein2], [start.protein1, start.protein2]
        while len(genes) < m and frontier:
            g = frontier.pop(0)
            for h in sorted(nbrs[g]):
                if h not in genes and len(genes) < m:
                    genes.append(h)
                    frontier.append(h)
        cells.append(genes)
    vocab = ["<pad>", "<cls>"] + sorted({g for c in cells for g in c})
    tok = {g: i for i, g in enumerate(vocab)}
    gene_ids, bins, expr, ei, ew, gptr, eptr = [], [], [], [], [], [0], [0]
    for genes in cells:
        pos = {g: i for i, g in enumerate(genes)}
        sub = edges[edges.protein1.isin(pos) & edges.protein2.isin(pos)]
        s = sub.protein1.map(pos).to_numpy()
        t = sub.protein2.map(pos).to_numpy()
        e = np.vstack([np.concatenate([s, t]), np.concatenate([t, s])])
        gene_ids.append([tok[g] for g in genes])
        b = rng.integers(0, n_bins + 1, len(genes))
        bins.append(b)
        expr.append(b / n_bins)
        ei.append(e)
        ew.append(np.ones(e.shape[1]))
        gptr.append(gptr[-1] + len(genes))
        eptr.append(eptr[-1] + e.shape[1])
    c = len(cells)
    arrays = {
        "obs_names": np.array([f"cell{i}" for i in range(c)]), "cell_type": np.array(["T"] * c),
        "split": np.array(["train"] * c),
        "gene_ptr": np.array(gptr, dtype=np.int64), "gene_ids": np.concatenate(gene_ids).astype(np.int32),
        "bins": np.concatenate(bins).astype(np.int16), "expr": np.concatenate(expr).astype(np.float32),
        "edge_ptr": np.array(eptr, dtype=np.int64), "edge_index": np.concatenate(ei, axis=1).astype(np.int32),
        "edge_weight": np.concatenate(ew).astype(np.float32), "n_bins": np.array(n_bins),
        "max_seq_len": np.array(max(lengths)),
    }
    return arrays, vocab


def make_model(attention="gremln", beta=1.0, n_layers=1, vocab_size=60, n_bins=10, seed=0, d=16, heads=2,
               diffuse="queries"):
    torch.manual_seed(seed)
    coeffs = heat_kernel_coefficients(beta, 1e-12).tolist()
    cfg = GREmLNConfig(d_model=d, n_layers=n_layers, n_heads=heads, attention=attention, vocab_size=vocab_size,
                       n_bins=n_bins, beta=beta, coefficients=coeffs, chebyshev_order=len(coeffs) - 1,
                       diffuse=diffuse)
    model = GREmLN(cfg).double().eval()
    with torch.no_grad():  # GPT-2 init gives near-uniform attention; sharpen it so queries matter
        for block in model.blocks:
            block.attn.c_attn.weight.mul_(25.0)
    return model


@pytest.fixture(scope="module")
def shard():
    arrays, vocab = huri_shard()
    ds = TokenDataset.from_arrays(arrays)
    batch = collate([ds[i] for i in range(len(ds))])
    batch["laplacian"] = batch["laplacian"].double()
    return arrays, vocab, batch


def direct_attention(attn, x, batch, beta: float | None, diffuse: str = "queries", gate=None):
    """softmax(Q' K^T / sqrt(dh)) V with Q' = expm(-beta L) Q on gene tokens, padded keys masked; with
    ``diffuse="queries+values"`` also V' = expm(-beta L) V; with ``diffuse="gated"`` plus
    gate_h (expm(-beta L) - I) V_h per head."""
    b, t, d = x.shape
    h = attn.n_heads
    dh = d // h
    q, k, v = (x @ attn.c_attn.weight.T + attn.c_attn.bias).split(d, dim=2)
    q, v_heat = q.clone(), v.clone()
    if beta is not None:
        for i in range(b):
            heat = torch.from_numpy(expm(-beta * batch["laplacian"][i].numpy()))
            q[i, 1:] = heat @ q[i, 1:]
            v_heat[i, 1:] = heat @ v[i, 1:]
    if diffuse == "queries+values":
        v = v_heat
    extra = (v_heat - v).view(b, t, h, dh).transpose(1, 2)
    q, k, v = (z.view(b, t, h, dh).transpose(1, 2) for z in (q, k, v))
    scores = q @ k.transpose(-1, -2) / dh**0.5
    scores = scores.masked_fill(~batch["attention_mask"][:, None, None, :], float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v
    if diffuse == "gated":
        y = y + gate[None, :, None, None] * extra
    return attn.c_proj(y.transpose(1, 2).reshape(b, t, d))


def layer_input(model, batch):
    x = torch.cat([model.gene_emb(batch["gene_ids"]), model.bin_emb(batch["bins"])], dim=-1)
    return model.blocks[0].ln_1(x)


def test_real_subgraphs_are_connected_and_padded(shard):
    arrays, vocab, batch = shard
    lap = batch["laplacian"]
    for i, m in enumerate(np.diff(arrays["gene_ptr"])):
        # a connected graph: exactly one zero eigenvalue on its m real nodes, zero padding rows
        ev = np.linalg.eigvalsh(lap[i, :m, :m].numpy())
        assert np.sum(ev < 1e-6) == 1 and ev.max() <= 2 + 1e-6
        assert torch.all(lap[i, m:] == 0) and torch.all(lap[i, :, m:] == 0)
        ref = normalized_laplacian(arrays["edge_index"][:, arrays["edge_ptr"][i]:arrays["edge_ptr"][i + 1]], m)
        np.testing.assert_allclose(lap[i, :m, :m].numpy(), ref.toarray(), atol=1e-6)


def test_heat_kernel_attention_equals_direct_expm(shard):
    _, vocab, batch = shard
    model = make_model("gremln", beta=1.0, vocab_size=len(vocab))
    x = layer_input(model, batch)
    attn = model.blocks[0].attn
    got = attn(x, batch["attention_mask"], batch["laplacian"], model.coefficients.double())
    want = direct_attention(attn, x, batch, beta=1.0)
    plain = direct_attention(attn, x, batch, beta=None)
    real = batch["attention_mask"]
    torch.testing.assert_close(got[real], want[real], rtol=1e-9, atol=1e-10)
    # the diffusion matters on these graphs: gene tokens differ from plain attention
    assert (got[:, 1:][real[:, 1:]] - plain[:, 1:][real[:, 1:]]).abs().max() > 1e-3


@pytest.mark.parametrize("diffuse", ["queries+values", "gated"])
def test_value_diffusion_equals_direct_expm(shard, diffuse):
    """The two value-diffusing variants against expm: V' = exp(-beta L) V, or a per-head gate on
    (exp(-beta L) - I) V added to the attention output. A gated model starts as the paper's (gate 0)."""
    _, vocab, batch = shard
    model = make_model("gremln", beta=1.0, vocab_size=len(vocab), diffuse=diffuse)
    attn = model.blocks[0].attn
    x = layer_input(model, batch)
    real = batch["attention_mask"]
    run = lambda: attn(x, real, batch["laplacian"], model.coefficients.double())  # noqa: E731
    paper = direct_attention(attn, x, batch, beta=1.0)
    if diffuse == "gated":
        torch.testing.assert_close(run()[real], paper[real], rtol=1e-9, atol=1e-10)
        with torch.no_grad():
            attn.gate.copy_(torch.tensor([0.7, -1.3], dtype=torch.float64))
    want = direct_attention(attn, x, batch, beta=1.0, diffuse=diffuse, gate=getattr(attn, "gate", None))
    torch.testing.assert_close(run()[real], want[real], rtol=1e-9, atol=1e-10)
    assert (want[:, 1:][real[:, 1:]] - paper[:, 1:][real[:, 1:]]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="diffuse"):
        GREmLNConfig(diffuse="keys")


def test_cls_query_is_not_diffused(shard):
    _, vocab, batch = shard
    model = make_model("gremln", vocab_size=len(vocab))
    x = layer_input(model, batch)
    attn = model.blocks[0].attn
    got = attn(x, batch["attention_mask"], batch["laplacian"], model.coefficients.double())
    plain = direct_attention(attn, x, batch, beta=None)
    torch.testing.assert_close(got[:, 0], plain[:, 0], rtol=1e-9, atol=1e-10)
    # in a 1-layer model, another graph changes the gene tokens' outputs but not the CLS output
    other = dict(batch)
    other["laplacian"] = batch["laplacian"].flip(0)[:, :, :].clone()
    other["laplacian"] = torch.where(batch["attention_mask"][:, 1:, None] & batch["attention_mask"][:, None, 1:],
                                     other["laplacian"], torch.zeros_like(other["laplacian"]))
    h1, h2 = model.encode(batch), model.encode(other)
    torch.testing.assert_close(h1[:, 0], h2[:, 0], rtol=1e-10, atol=1e-12)
    assert (h1[:, 1:] - h2[:, 1:]).abs().max() > 1e-3


def test_vanilla_is_plain_attention_and_ignores_the_laplacian(shard):
    _, vocab, batch = shard
    model = make_model("vanilla", vocab_size=len(vocab))
    x = layer_input(model, batch)
    attn = model.blocks[0].attn
    got = attn(x, batch["attention_mask"], batch["laplacian"], model.coefficients.double())
    plain = direct_attention(attn, x, batch, beta=None)
    real = batch["attention_mask"]
    torch.testing.assert_close(got[real], plain[real], rtol=1e-9, atol=1e-10)
    deep = make_model("vanilla", n_layers=2, vocab_size=len(vocab))
    other = dict(batch)
    other["laplacian"] = torch.rand_like(batch["laplacian"])
    torch.testing.assert_close(deep(batch), deep(other), rtol=0, atol=0)
    # while a 2-layer GREmLN does see the graph, CLS included (through the gene tokens it attends to)
    g = make_model("gremln", n_layers=2, vocab_size=len(vocab))
    assert (g.encode(batch)[:, 0] - g.encode(other)[:, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("attention", ["gremln", "vanilla"])
def test_padded_keys_get_no_attention(shard, attention):
    _, vocab, batch = shard
    model = make_model(attention, n_layers=2, vocab_size=len(vocab))
    pad = ~batch["attention_mask"]
    assert pad.any()
    other = dict(batch)
    other["gene_ids"] = torch.where(pad, torch.randint(2, len(vocab), pad.shape), batch["gene_ids"])
    other["bins"] = torch.where(pad, torch.randint(0, 11, pad.shape), batch["bins"])
    real = batch["attention_mask"]
    torch.testing.assert_close(model(batch)[real], model(other)[real], rtol=1e-10, atol=1e-12)
    # the check can fail: without the mask the padded tokens would change the real outputs
    other["attention_mask"] = torch.ones_like(real)
    assert (model(batch)[real] - model(other)[real]).abs().max() > 1e-6


def test_shapes_and_errors(shard):
    _, vocab, batch = shard
    model = make_model("gremln", n_layers=2, vocab_size=len(vocab))
    b, t = batch["gene_ids"].shape
    assert model.encode(batch).shape == (b, t, 16)
    assert model(batch).shape == (b, t, 11)
    bad = dict(batch)
    bad["laplacian"] = batch["laplacian"][:, :-1, :-1]
    with pytest.raises(ValueError, match="laplacian"):
        model(bad)
    with pytest.raises(ValueError, match="attention"):
        GREmLNConfig(attention="gat")


def test_load_round_trips_outputs_exactly(shard, tmp_path):
    _, vocab, batch = shard
    model = make_model("gremln", n_layers=2, vocab_size=len(vocab)).float()
    fbatch = dict(batch)
    fbatch["laplacian"] = batch["laplacian"].float()
    path = tmp_path / "model.pt"
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict(), "vocab": vocab}, path)
    loaded = load(path)
    assert not loaded.training and loaded.vocab == vocab
    torch.testing.assert_close(loaded(fbatch), model(fbatch), rtol=0, atol=0)
    torch.testing.assert_close(loaded.encode(fbatch), model.encode(fbatch), rtol=0, atol=0)


def test_checkpoint_without_diffuse_loads_as_query_diffusion(shard, tmp_path):
    """model.pt files written before the ``diffuse`` option hold no such key: they load as eq. 4 (queries);
    a gated checkpoint keeps its gates."""
    _, vocab, batch = shard
    for diffuse in ("queries", "gated"):
        model = make_model("gremln", vocab_size=len(vocab), diffuse=diffuse).float()
        config = model.config.to_dict()
        if diffuse == "queries":
            del config["diffuse"]
        path = tmp_path / f"{diffuse}.pt"
        torch.save({"config": config, "state_dict": model.state_dict(), "vocab": vocab}, path)
        loaded = load(path)
        assert loaded.config.diffuse == diffuse
        assert hasattr(loaded.blocks[0].attn, "gate") == (diffuse == "gated")
