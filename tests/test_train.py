"""Tests of the train stage: per-cell masks, the masked loss, optimisation, resumption, the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from cellgraph import cli
from cellgraph.io.shards import TokenDataset, collate
from cellgraph.models.gremln import GREmLN, GREmLNConfig, load
from cellgraph.graphs.spectral import heat_kernel_coefficients
from cellgraph.training.pretrain import fit, gepc_error, mask_positions, masked_step

from test_gremln import huri_shard

N_BINS = 10


@pytest.fixture(scope="module")
def cells():
    rng = np.random.default_rng(1)
    arrays, vocab = huri_shard(lengths=tuple(int(x) for x in rng.integers(6, 14, 24)), n_bins=N_BINS, seed=1)
    return arrays, vocab, TokenDataset.from_arrays(arrays)


def tiny_config(vocab, **kw) -> GREmLNConfig:
    coeffs = heat_kernel_coefficients(0.5, 1e-6).tolist()
    base = dict(d_model=16, n_layers=1, n_heads=2, vocab_size=len(vocab), n_bins=N_BINS, beta=0.5,
                coefficients=coeffs, chebyshev_order=len(coeffs) - 1, max_epochs=2, batch_size=6, lr=3e-3,
                mask_rate=0.3, seed=3, preset="test")
    base.update(kw)
    return GREmLNConfig(**base)


def write_tokens_and_coefficients(tmp_path: Path, arrays: dict, vocab: list[str]) -> tuple[Path, np.ndarray]:
    """The token folder ``tmp_path/tokens`` and a heat-kernel ``coefficients.json`` (beta 0.1) for the CLI."""
    write_tokens(tmp_path / "tokens", arrays, vocab)
    coef = tmp_path / "coefficients.json"
    coeffs = heat_kernel_coefficients(0.1, 1e-6)
    coef.write_text(json.dumps({"beta": 0.1, "tol": 1e-6, "K": len(coeffs) - 1, "coefficients": coeffs.tolist()}))
    return coef, coeffs


def test_masks_are_per_cell_and_only_on_gene_tokens(cells):
    _, _, ds = cells
    batch = collate([ds[i] for i in range(8)])
    am = batch["attention_mask"]
    m = mask_positions(am, batch["cell_index"], 0.3, seed=0, epoch=0)
    assert not m[:, 0].any() and not (m & ~am).any()
    n_real = am[:, 1:].sum(1)
    assert torch.equal(m.sum(1), torch.clamp(torch.round(0.3 * n_real.double()).long(), min=1))
    # the same cell in another batch (other neighbours, other padding length) gets the same mask
    other = collate([ds[5], ds[20], ds[3]])
    m2 = mask_positions(other["attention_mask"], other["cell_index"], 0.3, seed=0, epoch=0)
    for row, cell in ((0, 5), (2, 3)):
        k = int(n_real[cell]) + 1
        assert torch.equal(m2[row, :k], m[cell, :k])
    # another epoch or seed gives another mask
    assert not torch.equal(mask_positions(am, batch["cell_index"], 0.3, seed=0, epoch=1), m)
    assert not torch.equal(mask_positions(am, batch["cell_index"], 0.3, seed=1, epoch=0), m)


def test_loss_is_over_masked_positions_only(cells):
    _, vocab, ds = cells
    torch.manual_seed(0)
    model = GREmLN(tiny_config(vocab))
    batch = collate([ds[i] for i in range(6)])
    mask = mask_positions(batch["attention_mask"], batch["cell_index"], 0.3, seed=0, epoch=0)
    captured = {}

    def keep(_module, _inp, out):
        out.retain_grad()
        captured["logits"] = out

    handle = model.head.register_forward_hook(keep)
    loss, n, correct = masked_step(model, batch, mask)
    handle.remove()
    loss.backward()
    grad = captured["logits"].grad
    assert n == int(mask.sum()) and 0 <= correct <= n
    assert torch.all(grad[~mask] == 0)  # unmasked targets cannot influence the loss
    assert torch.all(grad[mask].abs().sum(-1) > 0)
    # the masked inputs were replaced by MASK, and the loss is the mean CE over the masked targets
    want = torch.nn.functional.cross_entropy(captured["logits"][mask], batch["bins"][mask])
    torch.testing.assert_close(loss, want)


def test_a_few_steps_reduce_the_loss(cells):
    _, vocab, ds = cells
    torch.manual_seed(0)
    model = GREmLN(tiny_config(vocab))
    batch = collate([ds[i] for i in range(6)])
    mask = mask_positions(batch["attention_mask"], batch["cell_index"], 0.3, seed=0, epoch=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss, _, _ = masked_step(model, batch, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


class _Interrupt(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash after epoch 1")


def test_resume_gives_the_weights_of_an_uninterrupted_run(cells, tmp_path):
    _, vocab, ds = cells
    train, val = torch.utils.data.Subset(ds, range(18)), torch.utils.data.Subset(ds, range(18, 24))
    cfg = tiny_config(vocab)
    files = [tmp_path / "tokens.bin"]
    files[0].write_bytes(b"shard v1")
    whole, hist_whole, s1 = fit(cfg, train, val, collate, tmp_path / "a", files)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg, train, val, collate, tmp_path / "b", files, callbacks=[_Interrupt()])
    assert (tmp_path / "b/last.ckpt").is_file()
    resumed, hist_resumed, s2 = fit(cfg, train, val, collate, tmp_path / "b", files)
    assert s1["resumed_from"] is None and s2["resumed_from"] == str(tmp_path / "b/last.ckpt")
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    key = ("epoch", "train_loss", "val_loss", "val_masked_accuracy")
    assert [tuple(r[c] for c in key) for r in hist_whole] == [tuple(r[c] for c in key) for r in hist_resumed]
    assert [r["epoch"] for r in hist_whole] == [1, 2]
    # training moved the weights away from the seeded initial ones
    torch.manual_seed(cfg.seed)
    pl.seed_everything(cfg.seed, verbose=False)
    init = GREmLN(cfg).state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a)
    # a changed token file or hyper-parameter must not resume the stale checkpoint
    files[0].write_bytes(b"shard v2")
    _, _, s3 = fit(dataclasses.replace(cfg, max_epochs=1), train, val, collate, tmp_path / "b", files)
    assert s3["resumed_from"] is None


def write_split_shard(path: Path, arrays: dict, split: str, idx: np.ndarray) -> None:
    """Write the cells ``idx`` of shard ``arrays`` as one split's npz (pointers rebuilt)."""
    gptr, eptr = arrays["gene_ptr"], arrays["edge_ptr"]
    g = np.concatenate([np.arange(gptr[i], gptr[i + 1]) for i in idx])
    e = np.concatenate([np.arange(eptr[i], eptr[i + 1]) for i in idx])
    sub = dict(arrays)
    sub.update(obs_names=arrays["obs_names"][idx], cell_type=arrays["cell_type"][idx],
               split=np.array([split] * len(idx)), gene_ids=arrays["gene_ids"][g], bins=arrays["bins"][g],
               expr=arrays["expr"][g], edge_index=arrays["edge_index"][:, e], edge_weight=arrays["edge_weight"][e],
               gene_ptr=np.concatenate([[0], np.cumsum(np.diff(gptr)[idx])]),
               edge_ptr=np.concatenate([[0], np.cumsum(np.diff(eptr)[idx])]))
    np.savez(path, **sub)


def write_tokens(folder: Path, arrays: dict, vocab: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    c = len(arrays["obs_names"])
    for split, idx in (("train", np.arange(0, 18)), ("val", np.arange(18, c))):
        write_split_shard(folder / f"{split}.npz", arrays, split, idx)
    (folder / "vocab.tsv").write_text("token_id\tgene\n" + "".join(f"{i}\t{g}\n" for i, g in enumerate(vocab)))


def test_cli_writes_model_and_metrics(cells, tmp_path):
    arrays, vocab, _ = cells
    coef, coeffs = write_tokens_and_coefficients(tmp_path, arrays, vocab)
    common = ["--tokens-dir", str(tmp_path / "tokens"), "--coefficients", str(coef), "--seed", "0",
              "--max-epochs", "2", "--batch-size", "8", "--threads", "1"]
    outs = {}
    for model in ("gremln", "vanilla"):
        out = tmp_path / "train" / model
        rc = cli.main(["train", *common, "--model", model, "--checkpoint-dir", str(tmp_path / "ck" / model),
                       "--out-dir", str(out)])
        assert rc == 0
        lines = (out / "metrics.tsv").read_text().splitlines()
        assert lines[0].split("\t") == ["epoch", "train_loss", "val_loss", "val_masked_accuracy"]
        rows = [[float(x) for x in line.split("\t")] for line in lines[1:]]
        assert [r[0] for r in rows] == [1, 2] and all(np.isfinite(r).all() and 0 <= r[3] <= 1 for r in rows)
        m = load(out / "model.pt")
        assert m.vocab == vocab and m.config.attention == model and m.config.n_bins == N_BINS
        assert m.config.chebyshev_order == len(coeffs) - 1 and m.config.beta == 0.1
        assert not list(tmp_path.glob("**/lightning_logs")) and not Path("lightning_logs").exists()
        batch = collate([TokenDataset(tmp_path / "tokens/val.npz")[i] for i in range(6)])
        outs[model] = m(batch)
        assert outs[model].shape == (6, batch["gene_ids"].shape[1], N_BINS + 1)
    assert not torch.equal(outs["gremln"], outs["vanilla"])


def test_cli_rejects_bad_coefficients_and_writes_nothing(cells, tmp_path, capsys):
    arrays, vocab, _ = cells
    write_tokens(tmp_path / "tokens", arrays, vocab)
    coef = tmp_path / "coefficients.json"
    coef.write_text(json.dumps({"beta": 0.1, "coefficients": []}))
    rc = cli.main(["train", "--tokens-dir", str(tmp_path / "tokens"), "--coefficients", str(coef),
                   "--model", "gremln", "--checkpoint-dir", str(tmp_path / "ck"), "--out-dir", str(tmp_path / "out")])
    assert rc == 2
    assert "coefficients" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "ck").exists()


@pytest.mark.parametrize("pretrain_on", ["train+corpus", "corpus"])
def test_pretrain_on_corpus_keeps_evaluation_cells_out(cells, tmp_path, monkeypatch, pretrain_on):
    """--pretrain-on corpus trains on pretrain.npz alone: no labelled train cell reaches fit()."""
    import cellgraph.training.pretrain as tr

    arrays, vocab, _ = cells
    coef, _ = write_tokens_and_coefficients(tmp_path, arrays, vocab)
    c = len(arrays["obs_names"])
    corpus = dict(arrays, obs_names=np.array([f"corpus-{n}" for n in arrays["obs_names"]]))
    write_split_shard(tmp_path / "tokens/pretrain.npz", corpus, "pretrain", np.arange(c))
    seen = {}
    real_fit = tr.fit

    def spy(config, train_ds, val_ds, *a, **kw):
        seen["train"], seen["val"] = set(train_ds.obs_names), set(val_ds.obs_names)
        return real_fit(config, train_ds, val_ds, *a, **kw)

    monkeypatch.setattr(tr, "fit", spy)
    ck = tmp_path / "ck"
    rc = cli.main(["train", "--tokens-dir", str(tmp_path / "tokens"), "--coefficients", str(coef), "--seed", "0",
                   "--max-epochs", "1", "--batch-size", "8", "--threads", "1", "--model", "vanilla",
                   "--pretrain-on", pretrain_on, "--checkpoint-dir", str(ck), "--out-dir", str(tmp_path / "out")])
    assert rc == 0
    labelled = set(np.asarray(arrays["obs_names"][:18]).astype(str))
    report = json.loads((ck / "report.json").read_text())
    assert seen["train"] & labelled == (set() if pretrain_on == "corpus" else labelled)
    assert {n for n in seen["train"] if n.startswith("corpus-")} == set(corpus["obs_names"])
    assert report["labelled_train_cells"] == (0 if pretrain_on == "corpus" else 18)
    assert report["pretrain_cells"] == c and report["pretrain_on"] == pretrain_on


def test_pretrain_on_corpus_without_a_corpus_is_one_clear_error(cells, tmp_path, capsys):
    arrays, vocab, _ = cells
    coef, _ = write_tokens_and_coefficients(tmp_path, arrays, vocab)
    rc = cli.main(["train", "--tokens-dir", str(tmp_path / "tokens"), "--coefficients", str(coef),
                   "--model", "gremln", "--pretrain-on", "corpus", "--checkpoint-dir", str(tmp_path / "ck"),
                   "--out-dir", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--pretrain-on corpus" in err and "pretrain.npz is missing" in err
    assert not (tmp_path / "out").exists()


def test_training_config_caps_the_chebyshev_order_at_the_presets():
    from cellgraph.models.gremln import PRESETS
    from cellgraph.training.pretrain import training_config

    cap = PRESETS["demo"].chebyshev_max_order
    long = [1.0 / (k + 1) for k in range(cap + 10)]
    cfg = training_config("demo", "gremln", vocab_size=12, n_bins=10, beta=0.2, coefficients=long, seed=3)
    assert cfg.chebyshev_order == cap and cfg.coefficients == long[: cap + 1]
    assert cfg.batch_size == PRESETS["demo"].batch_size and cfg.max_epochs == PRESETS["demo"].max_epochs
    assert (cfg.seed, cfg.attention, cfg.vocab_size, cfg.n_bins, cfg.beta) == (3, "gremln", 12, 10, 0.2)
    short = training_config("demo", "vanilla", 12, 10, 0.2, [0.5, 0.25, 0.125], batch_size=4, mask_rate=0.3)
    assert short.chebyshev_order == 2 and short.coefficients == [0.5, 0.25, 0.125]
    assert short.batch_size == 4 and short.mask_rate == 0.3 and short.attention == "vanilla"


def test_shard_n_bins_and_coefficients_reject_malformed_files(tmp_path):
    from cellgraph.errors import InputError
    from cellgraph.training.pretrain import read_coefficients, shard_n_bins

    good = tmp_path / "good.npz"
    np.savez(good, n_bins=np.int64(4), bins=np.array([0, 4, 2]), gene_ids=np.array([2, 3, 4]))
    assert shard_n_bins(good) == 4
    no_genes = tmp_path / "no_genes.npz"
    np.savez(no_genes, n_bins=np.int64(4), bins=np.array([0, 1]))
    with pytest.raises(InputError, match="not a token shard"):
        shard_n_bins(no_genes)
    out_of_range = tmp_path / "range.npz"
    np.savez(out_of_range, n_bins=np.int64(4), bins=np.array([0, 5]), gene_ids=np.array([2, 3]))
    with pytest.raises(InputError, match="bins must be in 0..n_bins=4"):
        shard_n_bins(out_of_range)
    coef = tmp_path / "coefficients.json"
    coef.write_text(json.dumps({"beta": 0.5, "coefficients": [1, 0.5]}))
    assert read_coefficients(coef) == (0.5, [1.0, 0.5])
    coef.write_text(json.dumps({"beta": 0.0, "coefficients": [1.0]}))
    with pytest.raises(InputError, match="beta > 0"):
        read_coefficients(coef)


# --------------------------------------------------------------------------------------------------
# The cell-embedding objective (GEPC)
# --------------------------------------------------------------------------------------------------
def _gepc_batch():
    """Two cells over a vocabulary of 8 genes (ids 2..9); known bins, one padding position."""
    return {"gene_ids": torch.tensor([[1, 3, 4, 0], [1, 5, 6, 7]]),
            "bins": torch.tensor([[13, 2, 5, 12], [13, 1, 0, 3]]),
            "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool()}


def test_gepc_error_targets_every_vocabulary_gene():
    batch = _gepc_batch()
    n_bins = 5
    # a prediction of 0 everywhere: the error is the sum of the squared targets of the cell's genes
    err = gepc_error(torch.zeros(2, 10), batch, n_bins)
    torch.testing.assert_close(err, torch.tensor([(2 / 5) ** 2 + 1.0, (1 / 5) ** 2 + 0 + (3 / 5) ** 2]))
    # the exact target scores 0; a gene that is not a token of the cell has target 0; CLS/pad columns are ignored
    exact = torch.zeros(2, 10)
    exact[0, 3], exact[0, 4] = 2 / 5, 1.0
    exact[1, 5], exact[1, 7] = 1 / 5, 3 / 5
    exact[:, :2] = 7.0
    torch.testing.assert_close(gepc_error(exact, batch, n_bins), torch.zeros(2))
    exact[1, 9] = 0.5  # a gene the second cell does not express
    torch.testing.assert_close(gepc_error(exact, batch, n_bins, cells=torch.tensor([True, True])),
                               torch.tensor([0.0, 0.25]))
    torch.testing.assert_close(gepc_error(exact, batch, n_bins, cells=torch.tensor([True, False])),
                               torch.zeros(2))


def test_gepc_reads_the_cls_state_only(cells):
    _, vocab, ds = cells
    torch.manual_seed(0)
    model = GREmLN(tiny_config(vocab, gepc_weight=1.0))
    batch = collate([ds[i] for i in range(4)])
    hidden = model.encode(batch).detach()
    pred = model.gepc(hidden)
    assert pred.shape == (4, len(vocab))
    other = hidden.clone()
    other[:, 1:] = torch.randn_like(other[:, 1:])  # the gene tokens' states do not reach the prediction
    torch.testing.assert_close(model.gepc(other), pred)
    other[:, 0] = torch.randn_like(other[:, 0])  # the CLS state does
    assert (model.gepc(other) - pred).abs().max() > 1e-3


def test_gepc_adds_its_weighted_error_to_the_masked_loss(cells):
    _, vocab, ds = cells
    batch = collate([ds[i] for i in range(6)])
    mask = mask_positions(batch["attention_mask"], batch["cell_index"], 0.3, seed=0, epoch=0)
    torch.manual_seed(0)
    model = GREmLN(tiny_config(vocab, gepc_weight=2.5))
    parts = {}
    loss, n, _ = masked_step(model, batch, mask, parts=parts)
    with torch.no_grad():
        want = gepc_error(model.gepc(model.encode({**batch, "bins": torch.where(
            mask, torch.full_like(batch["bins"], N_BINS + 1), batch["bins"])})), batch, N_BINS).sum() / n
    assert parts["gepc"] == pytest.approx(float(want), rel=1e-5) and parts["gepc"] > 0
    assert float(loss.detach()) == pytest.approx(parts["cross_entropy"] + 2.5 * parts["gepc"], rel=1e-5)
    # without the objective the model has no GEPC head (checkpoints keep their keys) and the loss is the CE
    plain = GREmLN(tiny_config(vocab))
    assert not any(k.startswith("gepc") for k in plain.state_dict())
    with pytest.raises(RuntimeError, match="no GEPC head"):
        plain.gepc(hidden=torch.zeros(1, 2, 16))
    parts = {}
    loss, _, _ = masked_step(plain, batch, mask, parts=parts)
    assert parts["gepc"] == 0 and float(loss.detach()) == pytest.approx(parts["cross_entropy"], rel=1e-6)
    with pytest.raises(ValueError, match="gepc_weight"):
        tiny_config(vocab, gepc_weight=-1.0)


def test_cli_gepc_weight_reaches_the_model_and_bad_values_are_refused(cells, tmp_path, capsys):
    arrays, vocab, _ = cells
    coef, _ = write_tokens_and_coefficients(tmp_path, arrays, vocab)
    common = ["train", "--tokens-dir", str(tmp_path / "tokens"), "--coefficients", str(coef), "--model", "gremln",
              "--max-epochs", "1", "--batch-size", "8", "--threads", "1"]
    for bad in ("-0.5", "nan"):
        rc = cli.main([*common, "--gepc-weight", bad, "--checkpoint-dir", str(tmp_path / "ck_bad"),
                       "--out-dir", str(tmp_path / "bad")])
        assert rc == 2 and "--gepc-weight" in capsys.readouterr().err
        assert not (tmp_path / "bad").exists() and not (tmp_path / "ck_bad").exists()
    rc = cli.main([*common, "--gepc-weight", "1.5", "--checkpoint-dir", str(tmp_path / "ck"),
                   "--out-dir", str(tmp_path / "out")])
    assert rc == 0
    m = load(tmp_path / "out/model.pt")  # the GEPC head is saved and loads back
    assert m.config.gepc_weight == 1.5 and any(k.startswith("gepc") for k in m.state_dict())
    batch = collate([TokenDataset(tmp_path / "tokens/val.npz")[i] for i in range(3)])
    assert m.gepc(m.encode(batch)).shape == (3, len(vocab))
