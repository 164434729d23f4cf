"""Cell graph transformers: equivariance, empty S, sampled-row KL, masked tasks, pointer-array batching."""

from __future__ import annotations

import math

import pytest
import torch

from cellgraph.models import cell_graph_transformer as cgt

N = 23


def _graphs(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, 4 * n), generator=g)
    w = torch.rand(4 * n, generator=g) + 0.1
    ei2 = torch.randint(0, n, (2, 2 * n), generator=g)
    return {"ppi": (ei, w, False), "reg": (ei2, None, True)}


def _cfg(**kw):
    base = dict(n_genes=N, d_model=16, n_layers=2, n_heads=4, ffn_mult=2, row_sample_rate=0.5,
                graph_reg={"ppi": [0, 1, 0.5], "reg": [1, 3, 2.0]}, n_gene_set=2)
    base.update(kw)
    return cgt.CGTConfig(**base)


def _batch(sets, types=None, n=N):
    ptr = torch.tensor([0] + [len(s) for s in sets]).cumsum(0)
    idx = torch.tensor([g for s in sets for g in s], dtype=torch.long)
    typ = torch.zeros_like(idx) if types is None else torch.tensor([t for ts in types for t in ts], dtype=torch.long)
    return {"pert_ptr": ptr, "pert_idx": idx, "pert_type": typ}


def _model(kind="equivariant", seed=0, **kw):
    torch.manual_seed(seed)
    gs = torch.zeros(N, dtype=torch.bool)
    gs[[1, 4, 7, 9]] = True
    m = cgt.build_model(kind, _cfg(**kw), _graphs(), gene_set=gs)
    # non-zero type embeddings so that the type term is exercised
    for mod in m.modules():
        if isinstance(mod, torch.nn.Embedding) and mod.num_embeddings == len(cgt.PERTURBATION_TYPES):
            torch.nn.init.normal_(mod.weight, std=0.5)
    # readouts start at their offsets (zero last layers): give them a slope so the tests see them vary
    last = [m.expression[-1], m.interaction[-1]] if kind == "equivariant" else [m.out[-1]]
    for layer in last:
        torch.nn.init.normal_(layer.weight, std=0.5)
    return m.eval()


def test_equivariance_under_gene_permutation():
    model = _model()
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(3))  # new position p holds old gene perm[p]
    inv = torch.argsort(perm)
    sets = [[2, 5], [], [7, 11, 0]]
    out, _, _ = model(_batch(sets, [[0, 2], [], [1, 0, 2]]))

    pm = _model()
    with torch.no_grad():
        pm.encoder.gene_emb.weight.copy_(model.encoder.gene_emb.weight[perm])
        pm.gene_set_mask.copy_(model.gene_set_mask[perm])
    psets = [[int(inv[g]) for g in s] for s in sets]
    pout, _, _ = pm(_batch(psets, [[0, 2], [], [1, 0, 2]]))
    torch.testing.assert_close(pout["h_pert"], out["h_pert"][:, perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pout["expression"], out["expression"][:, perm], atol=1e-5, rtol=1e-4)
    for t in ("fitness", "interaction", "gene_set"):
        torch.testing.assert_close(pout[t], out[t], atol=1e-5, rtol=1e-4)
    # the permutation is not trivial: the expression readout actually differs between genes
    assert not torch.allclose(out["expression"][:, perm], out["expression"], atol=1e-4)


@pytest.mark.parametrize("head", ["cross_attention", "hypersagnn", "mean"])
def test_empty_set_gives_zero_term_and_no_nan(head):
    model = _model("non_equivariant", head=head)
    h, _, _ = model.encoder()
    batch = _batch([[], [3, 8], []])
    z = model.collapse(h[1:], batch)
    assert torch.isfinite(z).all()
    assert torch.equal(z[0], torch.zeros(16)) and torch.equal(z[2], torch.zeros(16))
    assert z[1].abs().sum() > 0
    out, reg, _ = model(batch)
    assert all(torch.isfinite(v).all() for v in out.values()) and torch.isfinite(reg)

    eq = _model()
    h_eq, _, _ = eq.encoder()
    hp = eq.type1(h_eq[1:], batch)  # [B, N, d]
    # empty S: no attention term, H_pert = LN2(x + FFN(x)) with x = LN1(H)
    x = eq.type1.ln1(h_eq[1:])
    torch.testing.assert_close(hp[0], eq.type1.ln2(x + eq.type1.ffn(x)))
    assert torch.isfinite(hp).all() and not torch.allclose(hp[1], hp[0])


def test_sampled_row_kl_equals_full_map_kl():
    torch.manual_seed(1)
    cfg = _cfg()
    enc = cgt.SharedEncoder(cfg)
    enc.set_graphs(_graphs())
    rows = {n: enc.sample_rows(n, torch.Generator().manual_seed(5)) for n in enc.graph_names}
    assert rows["ppi"].numel() == math.ceil(0.5 * enc.reg_ppi_pos.numel())
    _, reg_loss, kl = enc(rows)

    # reference: materialise every attention map and read the KL off the full map
    cfg_full = _cfg(materialize_attention=True)
    ref = cgt.SharedEncoder(cfg_full)
    ref.set_graphs(_graphs())
    ref.load_state_dict(enc.state_dict())
    x = torch.cat([ref.cls, ref.gene_emb.weight], 0)
    full = {}
    for li, block in enumerate(ref.blocks):
        xa = block.ln1(x)
        t = xa.shape[0]
        q, k, _ = block.attn.qkv(xa).view(t, 3, 4, 4).permute(1, 2, 0, 3)
        alpha = (q @ k.transpose(-1, -2) / 2.0).softmax(-1)  # [H, T, T]
        for name, (layer, head, _) in cfg.graph_reg.items():
            if layer == li:
                full[name] = cgt.full_attention_kl(alpha[head], rows[name], enc.get_buffer(f"reg_{name}_row"),
                                                   enc.get_buffer(f"reg_{name}_col"), enc.get_buffer(f"reg_{name}_val"))
        x, _ = block(x, [])
    for name in full:
        torch.testing.assert_close(kl[name], full[name], atol=1e-6, rtol=1e-5)
        assert kl[name] > 0
    # each lambda exactly once
    torch.testing.assert_close(reg_loss, 0.5 * full["ppi"] + 2.0 * full["reg"], atol=1e-6, rtol=1e-5)
    # the materialising variant gives the same losses
    _, reg_full, _ = ref(rows)
    torch.testing.assert_close(reg_full, reg_loss, atol=1e-6, rtol=1e-5)


def test_row_normalized_rows_sum_to_one_and_undirected_mirrored():
    ei = torch.tensor([[0, 1, 2, 2], [1, 2, 0, 2]])
    row, col, val, pos = cgt.row_normalized_csr(ei, torch.tensor([1.0, 3.0, 1.0, 5.0]), 4, directed=False)
    sums = torch.zeros(4).index_add_(0, row, val)
    torch.testing.assert_close(sums[pos], torch.ones(pos.numel()))
    assert pos.tolist() == [0, 1, 2]  # gene 3 has no edge; the self-loop (2,2) is dropped
    # 1 -> 0 weight 1 and 1 -> 2 weight 3: row 1 is [0.25, 0, 0.75]
    got = {(int(r), int(c)): float(v) for r, c, v in zip(row, col, val)}
    assert got[(1, 0)] == pytest.approx(0.25) and got[(1, 2)] == pytest.approx(0.75)


def test_masked_tasks_contribute_no_gradient():
    model = _model()
    model.train()
    batch = _batch([[1], [2, 3], []])
    nan = float("nan")
    batch.update(
        y_fitness=torch.tensor([0.5, nan, 1.0]), m_fitness=torch.tensor([True, False, True]),
        y_interaction=torch.tensor([nan, nan, nan]), m_interaction=torch.zeros(3, dtype=torch.bool),
        y_expression=torch.randn(3, N), m_expression=torch.zeros(3, N, dtype=torch.bool),
    )
    batch["m_expression"][:, :10] = True
    batch["y_expression"][:, 10:] = nan  # unmeasured genes
    rows = {n: model.encoder.sample_rows(n, torch.Generator().manual_seed(0)) for n in model.encoder.graph_names}
    out, _, _ = model(batch, rows)
    loss, parts = cgt.multitask_loss(out, batch, {"fitness": 1.0, "interaction": 1.0, "expression": 1.0})
    loss.backward()
    assert torch.isfinite(loss) and set(parts) == {"fitness", "expression"}
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.interaction.parameters())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.fitness[0].weight.grad.abs().sum() > 0
    # the masked fitness label of sample 1 has no effect: changing it leaves every gradient unchanged
    g1 = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    batch["y_fitness"][1] = 123.0
    out, _, _ = model(batch, rows)
    cgt.multitask_loss(out, batch, {"fitness": 1.0, "interaction": 1.0, "expression": 1.0})[0].backward()
    for k, p in model.named_parameters():
        if k in g1:
            torch.testing.assert_close(p.grad, g1[k])


@pytest.mark.parametrize("kind,head", [("equivariant", "cross_attention"), ("non_equivariant", "cross_attention"),
                                       ("non_equivariant", "hypersagnn"), ("non_equivariant", "mean")])
def test_pointer_batching_equals_one_at_a_time(kind, head):
    model = _model(kind, head=head)
    sets, types = [[4], [], [1, 9, 17], [3, 5]], [[0], [], [2, 1, 0], [1, 1]]
    out, _, _ = model(_batch(sets, types))
    for i, (s, t) in enumerate(zip(sets, types)):
        one, _, _ = model(_batch([s], [t]))
        for key in one:
            torch.testing.assert_close(one[key][0], out[key][i], atol=1e-5, rtol=1e-4)
    # and the samples really differ
    assert not torch.allclose(out["fitness"][0], out["fitness"][2])


def test_encoder_runs_once_per_step_independent_of_batch_size():
    model = _model()
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    model(_batch([[1]] * 7))
    assert len(calls) == 1


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for ck in (False, True):
        torch.manual_seed(0)
        m = cgt.build_model("equivariant", _cfg(checkpoint=ck), _graphs())
        batch = _batch([[1, 2], [], [5]])
        batch.update(y_expression=torch.randn(3, N, generator=torch.Generator().manual_seed(1)),
                     m_expression=torch.ones(3, N, dtype=torch.bool))
        rows = {n: m.encoder.sample_rows(n, torch.Generator().manual_seed(0)) for n in m.encoder.graph_names}
        out, reg, _ = m(batch, rows)
        (cgt.multitask_loss(out, batch, {"expression": 1.0})[0] + reg).backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
    assert grads[0].abs().sum() > 0


def test_attention_rows_equal_the_heads_softmax_rows():
    torch.manual_seed(0)
    cfg = cgt.preset("demo", 20)
    enc = cgt.SharedEncoder(cfg).eval()
    rows = torch.tensor([0, 4, 19])
    got = enc.attention_rows(rows)  # [L, H, R, N+1]
    assert got.shape == (cfg.n_layers, cfg.n_heads, 3, 21)
    x = torch.cat([enc.cls, enc.gene_emb.weight], 0)
    with torch.no_grad():
        for li, block in enumerate(enc.blocks):  # reference: the log-softmax rows the KL term is computed from
            x_next, log_rows = block(x, [(h, rows) for h in range(cfg.n_heads)])
            torch.testing.assert_close(got[li], torch.stack(log_rows).exp())
            x = x_next
    torch.testing.assert_close(got.sum(-1), torch.ones(cfg.n_layers, cfg.n_heads, 3))


def test_attention_diagnostics_on_known_attention(monkeypatch):
    """Head 0 attends exactly along the graph (A~), head 1 uniformly: every metric has a known value."""
    n = 10
    edge_index = torch.tensor([[0, 0, 1, 2, 3], [1, 2, 2, 3, 4]])  # undirected, mirrored inside
    cfg = cgt.CGTConfig(n_genes=n, d_model=8, n_layers=1, n_heads=2, graph_reg={"g": [0, 0, 0.1]})
    enc = cgt.SharedEncoder(cfg)
    row, col, val, _ = cgt.row_normalized_csr(edge_index, None, n, False)
    a_tilde = torch.zeros(n, n + 1)
    a_tilde[row, col + 1] = val

    def fake(rows):
        uniform = torch.full((rows.numel(), n + 1), 1.0 / (n + 1))
        return torch.stack([a_tilde[rows], uniform])[None]  # [1, 2, R, N+1]

    monkeypatch.setattr(enc, "attention_rows", fake)
    g_rows, h_rows = cgt.attention_diagnostics(enc, {"g": (edge_index, None, False)}, ks=(2, 32))
    h0, h1 = g_rows
    deg = torch.tensor([2, 2, 3, 2, 1], dtype=torch.float)  # genes 0-4 have edges
    assert h0["regularised"] and not h1["regularised"] and h0["rows"] == 5
    assert h0["edge_mass"] == pytest.approx(1.0) and h0["recall_at_degree"] == pytest.approx(1.0)
    assert h0["precision_at_2"] == pytest.approx(float((deg.clamp(max=2) / 2).mean()))
    assert h0["precision_at_32"] == pytest.approx(float((deg / n).mean()))  # k capped at N
    assert h1["edge_mass"] == pytest.approx(h1["uniform_mass"]) == pytest.approx(float((deg / (n + 1)).mean()))
    # heads: A~ rows of the sampled genes (some have no edges: zero rows) vs uniform
    assert h_rows[1]["entropy"] == pytest.approx(math.log(n + 1))
    assert h_rows[1]["effective_rank"] == pytest.approx(1.0)  # all rows equal: rank one
    assert h_rows[0]["effective_rank"] > 1.5


# ---- issue 13: single-gene sets, fixed features, offsets, weights, signed edges, CUDA ----------------


def test_type_one_learns_on_single_gene_sets_only_with_the_set_gate():
    """With one key the softmax weight is 1 whatever q and k are: no gradient reaches W_q, W_k. The null key
    makes the weight sigmoid(q.(k - k_null)), so they learn. (The zero-initialised readout passes gradient to
    the transform only after a step, so the readout gets a slope first.)"""
    grads = {}
    for gate in (False, True):
        torch.manual_seed(0)
        model = cgt.build_model("equivariant", _cfg(set_gate=gate, graph_reg={}))
        torch.nn.init.normal_(model.expression[-1].weight, std=0.5)
        if gate:
            torch.nn.init.normal_(model.type1.null_key, std=0.5)
        out, _, _ = model(_batch([[2], [5], [11]]))
        ((out["expression"] - torch.randn(3, N)) ** 2).mean().backward()
        grads[gate] = (model.type1.q.weight.grad.abs().max().item(), model.type1.k.weight.grad.abs().max().item())
    assert max(grads[False]) < 1e-8
    assert min(grads[True]) > 1e-5


def test_feature_only_genes_and_offsets_define_the_untrained_model():
    """Without identity rows two genes with the same features are the same token; an untrained model predicts
    exactly the offsets (own offset at the perturbed gene only)."""
    torch.manual_seed(0)
    feats = torch.randn(N, 6)
    feats[4] = feats[9]
    model = cgt.build_model("equivariant", _cfg(graph_reg={}, n_features=6, gene_identity=False)).eval()
    model.encoder.set_features(feats)
    assert not hasattr(model.encoder, "gene_emb")
    tokens = model.encoder.gene_tokens()
    torch.testing.assert_close(tokens[4], tokens[9])
    offset, own = torch.randn(N), torch.randn(N)
    model.expression_offset.copy_(offset)
    model.own_offset.copy_(own)
    out, _, _ = model(_batch([[3], [], [1, 7]]))
    expect = offset.repeat(3, 1)
    expect[0, 3] += own[3]
    expect[2, [1, 7]] += own[[1, 7]]
    torch.testing.assert_close(out["expression"], expect)
    with pytest.raises(ValueError, match="gene features must be"):
        model.encoder.set_features(torch.randn(N, 5))
    with pytest.raises(ValueError, match="n_features"):
        _cfg(gene_identity=False)


def test_sample_weights_scale_each_sample_in_the_loss():
    pred = {"expression": torch.tensor([[1.0, 2.0], [3.0, 5.0]]), "fitness": torch.tensor([1.0, 0.0])}
    batch = {"y_expression": torch.zeros(2, 2), "m_expression": torch.tensor([[True, True], [True, False]]),
             "y_fitness": torch.zeros(2), "m_fitness": torch.ones(2, dtype=torch.bool),
             "sample_weight": torch.tensor([1.0, 0.0])}
    _, parts = cgt.multitask_loss(pred, batch, {"expression": 1.0, "fitness": 1.0})
    assert parts["expression"] == pytest.approx((1 + 4) / 2)  # sample 2 has weight 0
    assert parts["fitness"] == pytest.approx(1.0)
    batch["sample_weight"] = torch.tensor([1.0, 1.0])
    _, parts = cgt.multitask_loss(pred, batch, {"expression": 1.0})
    assert parts["expression"] == pytest.approx((1 + 4 + 9) / 3)


def test_negative_edges_stay_in_the_attention_target():
    ei = torch.tensor([[0, 0, 1], [1, 2, 2]])
    w = torch.tensor([1.0, -3.0, 0.5])  # a repressive edge 0 -> 2
    row, col, val, _ = cgt.row_normalized_csr(ei, w, 3, directed=True)
    got = {(int(r), int(c)): float(v) for r, c, v in zip(row, col, val)}
    assert got == {(0, 1): pytest.approx(0.25), (0, 2): pytest.approx(0.75), (1, 2): pytest.approx(1.0)}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_models_run_on_cuda():
    torch.manual_seed(0)
    for kind in ("equivariant", "non_equivariant"):
        model = cgt.build_model(kind, _cfg(n_features=6), _graphs()).cuda()
        if kind == "equivariant":
            model.encoder.set_features(torch.randn(N, 6, device="cuda"))
        batch = {k: v.cuda() for k, v in _batch([[2, 5], [], [7]]).items()}
        out, reg, _ = model(batch)
        loss = sum(v.float().sum() for k, v in out.items() if k != "h_pert") + reg
        loss.backward()
        assert all(v.is_cuda for v in out.values()) and torch.isfinite(loss)


def test_saved_model_loads_with_weights_only_and_predicts_the_same(tmp_path):
    """model.pt as cellgraph perturb writes it loads with torch.load(weights_only=True): no pickled code."""
    model = _model("equivariant")
    path = tmp_path / "model.pt"
    torch.save({"kind": "equivariant", "config": cgt.config_dict(model.cfg), "state_dict": model.state_dict(),
                "graphs": _graphs(), "genes": [f"g{i}" for i in range(N)]}, path)
    loaded = cgt.load(path)
    batch = _batch([[1, 2], [5], [0, 7, 9]])
    with torch.no_grad():
        want, got = model(batch), loaded(batch)
    torch.testing.assert_close(got[0], want[0])  # the predictions ([1] is the sampled-row graph loss)
    assert loaded.gene_set_mask.sum() == 4  # the buffers travel with the state dict


def test_segment_mean_is_the_per_sample_mean_and_zero_for_empty_sets():
    from cellgraph.models.cell_graph_transformer import _segment_mean, segment_ids

    torch.manual_seed(0)
    ptr = torch.tensor([0, 3, 3, 7, 8])  # sample 1 has an empty set
    x = torch.randn(8, 5)
    got = _segment_mean(x, segment_ids(ptr), 4)
    want = torch.stack([x[a:b].mean(0) if b > a else torch.zeros(5) for a, b in zip(ptr[:-1], ptr[1:])])
    torch.testing.assert_close(got, want)
    assert torch.equal(got[1], torch.zeros(5))
