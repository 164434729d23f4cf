"""Stage ``train``: masked rank modelling with a GREmLN (graph-diffusion attention) or vanilla transformer.

A fraction ``mask_rate`` of each cell's real gene tokens (never CLS or padding) has its rank bin replaced by
``MASK``; the model predicts the original bin (``0..n_bins``) and the loss is the cross-entropy over the
masked positions only (GREmLN, Zhang et al. 2025, section 2.3). The mask of a cell is drawn from a
generator seeded by ``(seed, stream, epoch, cell_index)`` alone, so it does not depend on the batch the cell
lands in (validation uses a fixed mask, epoch 0 of its own stream). AdamW with a linear warm-up over the
first 10% of the steps, then cosine decay to 0 (paper appendix A.5). The loop, the per-epoch checkpoints
and resumption are Lightning's; a run resumes from ``<checkpoint-dir>/last.ckpt`` only if the fingerprint of
(hyper-parameters, token files) stored beside it matches the current one, and starts fresh otherwise.

Outputs (design.md section 6): ``<out-dir>/model.pt`` ``{"config", "state_dict", "vocab"}`` and
``<out-dir>/metrics.tsv`` (``epoch, train_loss, val_loss, val_masked_accuracy``); ``report.json`` with
timings and sizes goes to the checkpoint folder (not a declared output).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .io import atomic_path, require_file, write_json
from .models.gremln import PRESETS, GREmLN, GREmLNConfig, bin_tokens, preset

log = logging.getLogger(__name__)

__all__ = ["mask_positions", "masked_step", "MaskedRankModule", "fit", "fingerprint", "configure_parser", "run"]

TRAIN_STREAM, VAL_STREAM = 1, 2
METRIC_COLUMNS = ["epoch", "train_loss", "val_loss", "val_masked_accuracy"]


# --------------------------------------------------------------------------------------------------
# Masking and the loss
# --------------------------------------------------------------------------------------------------


def mask_positions(attention_mask: torch.Tensor, cell_index: torch.Tensor, mask_rate: float, seed: int,
                   epoch: int, stream: int = TRAIN_STREAM) -> torch.Tensor:
    """Bool [B, 1+n]: the gene tokens whose bin is masked, ``max(1, round(mask_rate * n_real))`` per cell.

    Cell ``b``'s positions are drawn without replacement from its real gene tokens (``attention_mask``
    True, position 0 = CLS excluded) by ``numpy.random.default_rng([seed, stream, epoch, cell_index[b]])``,
    so the mask of a cell is independent of batch composition and padding length.
    """
    am = attention_mask.detach().cpu().numpy().astype(bool)
    idx = cell_index.detach().cpu().numpy()
    out = np.zeros_like(am)
    for b in range(am.shape[0]):
        real = np.flatnonzero(am[b, 1:]) + 1
        if real.size == 0:
            continue
        rng = np.random.default_rng([int(seed), int(stream), int(epoch), int(idx[b])])
        k = max(1, int(round(mask_rate * real.size)))
        out[b, rng.choice(real, size=k, replace=False)] = True
    return torch.from_numpy(out).to(attention_mask.device)


def masked_step(model: GREmLN, batch: dict[str, torch.Tensor], mask: torch.Tensor
                ) -> tuple[torch.Tensor, int, int]:
    """Mean cross-entropy over masked positions, their number and the number predicted right.

    ``mask`` Bool [B, 1+n] from :func:`mask_positions`; the masked bins are replaced by ``MASK`` before the
    forward pass and the targets are the original bins (0..n_bins). Unmasked positions do not contribute.
    """
    target = batch["bins"]
    inputs = dict(batch)
    inputs["bins"] = torch.where(mask, torch.full_like(target, bin_tokens(model.config.n_bins)["MASK"]), target)
    logits = model(inputs)[mask].float()  # [M, n_bins + 1]
    tgt = target[mask]
    loss = F.cross_entropy(logits, tgt)
    return loss, int(tgt.numel()), int((logits.argmax(-1) == tgt).sum())


# --------------------------------------------------------------------------------------------------
# Lightning module
# --------------------------------------------------------------------------------------------------


def _lightning():
    import lightning.pytorch as pl

    return pl


class MaskedRankModule(_lightning().LightningModule):
    """Lightning wrapper: masked-rank loss, AdamW + warm-up/cosine schedule, per-epoch metric history."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg = GREmLNConfig(**config)
        self.model = GREmLN(self.cfg)
        self.history: list[dict[str, float]] = []
        self._reset("train")
        self._reset("val")

    def _reset(self, which: str) -> None:
        setattr(self, f"_{which}_acc", [0.0, 0, 0])  # loss * count, count, correct
        if which == "train":
            self._t0 = time.perf_counter()

    def _run(self, batch, stream: int, epoch: int, which: str) -> torch.Tensor:
        mask = mask_positions(batch["attention_mask"], batch["cell_index"], self.cfg.mask_rate, self.cfg.seed,
                              epoch, stream)
        loss, n, correct = masked_step(self.model, batch, mask)
        acc = getattr(self, f"_{which}_acc")
        acc[0] += float(loss.detach()) * n
        acc[1] += n
        acc[2] += correct
        return loss

    def on_train_epoch_start(self) -> None:
        self._reset("train")

    def training_step(self, batch, batch_idx):
        return self._run(batch, TRAIN_STREAM, self.current_epoch, "train")

    def on_validation_epoch_start(self) -> None:
        self._reset("val")

    def validation_step(self, batch, batch_idx):
        return self._run(batch, VAL_STREAM, 0, "val")

    def on_train_epoch_end(self) -> None:  # runs after this epoch's validation, before the checkpoint
        tr, va = self._train_acc, self._val_acc
        row = {
            "epoch": int(self.current_epoch) + 1,
            "train_loss": tr[0] / max(tr[1], 1),
            "val_loss": va[0] / va[1] if va[1] else float("nan"),
            "val_masked_accuracy": va[2] / va[1] if va[1] else float("nan"),
            "seconds": time.perf_counter() - self._t0,
        }
        self.history.append(row)
        log.info("epoch %d: train_loss %.4f val_loss %.4f val_masked_accuracy %.4f (%.1f s)", row["epoch"],
                 row["train_loss"], row["val_loss"], row["val_masked_accuracy"], row["seconds"])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["metrics_history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("metrics_history", []))

    def configure_optimizers(self):
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.cfg.lr, betas=(0.9, 0.95),
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warm = max(int(round(self.cfg.warmup_fraction * total)), 1)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = min((step - warm) / max(total - warm, 1), 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------


def fingerprint(config: dict[str, Any], files: Sequence[str | Path]) -> str:
    """SHA-256 over the JSON of ``config`` and the bytes of ``files``: what a checkpoint may resume from."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for f in files:
        h.update(Path(f).name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _trainer(pl, config: GREmLNConfig, ckdir: Path, cuda: bool, callbacks: list):
    """A quiet Lightning Trainer: no logger, progress bar or summary; checkpoints in ``ckdir``."""
    return pl.Trainer(
        max_epochs=config.max_epochs,
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        precision="bf16-mixed" if cuda else "32-true",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True if not cuda else "warn",
        gradient_clip_val=1.0,
        default_root_dir=str(ckdir),
        callbacks=callbacks,
    )


def fit(config: GREmLNConfig, train_ds, val_ds, collate, checkpoint_dir: str | Path,
        fingerprint_files: Sequence[str | Path] = (), callbacks: Sequence[Any] = ()
        ) -> tuple[GREmLN, list[dict[str, float]], dict[str, Any]]:
    """Train ``GREmLN(config)`` on ``train_ds``, validating on ``val_ds`` after every epoch.

    Datasets yield items that ``collate`` turns into design.md section 5 batches (with ``cell_index``).
    Checkpoints go to ``checkpoint_dir/last.ckpt`` every epoch; an existing one is resumed only when
    ``checkpoint_dir/fingerprint.json`` matches :func:`fingerprint` of ``(config, fingerprint_files)``.
    CUDA with bf16 autocast when available, else CPU fp32. Returns the trained model (eval mode, CPU,
    fp32), the per-epoch metric rows and a run summary (device, resumed, epochs, seconds).
    """
    pl = _lightning()
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, DistributedSampler

    ckdir = Path(checkpoint_dir)
    ckdir.mkdir(parents=True, exist_ok=True)
    cfg = config.to_dict()
    fp = fingerprint(cfg, fingerprint_files)
    last, fp_file = ckdir / "last.ckpt", ckdir / "fingerprint.json"
    resume = None
    if last.is_file() and fp_file.is_file():
        try:
            if json.loads(fp_file.read_text()).get("fingerprint") == fp:
                resume = last
        except (json.JSONDecodeError, AttributeError):
            resume = None
    if resume is None:
        if last.exists():
            log.info("%s: fingerprint differs from the current run; starting fresh", last)
        for stale in ckdir.glob("*.ckpt"):  # this folder is ours: stale checkpoints of another run
            stale.unlink()
        write_json(fp_file, {"fingerprint": fp, "config": cfg, "files": [str(f) for f in fingerprint_files]})
    else:
        log.info("resuming from %s", last)

    pl.seed_everything(config.seed, workers=True, verbose=False)
    module = MaskedRankModule(cfg)
    # a per-epoch permutation seeded by (seed, epoch): the same order whether or not the run was resumed
    sampler = DistributedSampler(train_ds, num_replicas=1, rank=0, shuffle=True, seed=config.seed)
    train_dl = DataLoader(train_ds, batch_size=config.batch_size, sampler=sampler, collate_fn=collate)
    val_dl = DataLoader(val_ds, batch_size=config.batch_size, shuffle=False, collate_fn=collate)
    cuda = torch.cuda.is_available()
    pl_log = logging.getLogger("lightning.pytorch")  # no device banners or tips in the stage's log
    level = pl_log.level
    pl_log.setLevel(logging.WARNING)
    try:
        trainer = _trainer(pl, config, ckdir, cuda, [ModelCheckpoint(
            dirpath=str(ckdir), filename="{epoch:03d}", save_last=True, save_top_k=1, every_n_epochs=1,
            enable_version_counter=False), *callbacks])
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*treespec.*LeafSpec.*")
            warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
            warnings.filterwarnings("ignore", message=".*LightningModule.*has parameters that were not used.*")
            trainer.fit(module, train_dl, val_dl, ckpt_path=str(resume) if resume else None)
    finally:
        pl_log.setLevel(level)
    model = module.model.float().cpu().eval()
    summary = {"device": "cuda" if cuda else "cpu", "precision": "bf16-mixed" if cuda else "32-true",
               "resumed_from": str(resume) if resume else None, "fit_seconds": time.perf_counter() - t0,
               "n_parameters": int(sum(p.numel() for p in model.parameters()))}
    return model, list(module.history), summary


# --------------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens-dir", required=True, help="tokenize output (train.npz, val.npz, vocab.tsv)")
    p.add_argument("--coefficients", required=True, help="spectral coefficients.json (beta, Chebyshev weights)")
    p.add_argument("--model", required=True, choices=["gremln", "vanilla"],
                   help="gremln: heat-kernel query diffusion; vanilla: plain attention (ablation)")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="model/training preset (default demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, shuffling and masks (default 0)")
    p.add_argument("--max-epochs", type=int, default=None,
                   help="epochs (default: the preset's; demo 8 = config train.max_epochs)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="cells per batch (default: the preset's; demo 32 = config train.batch_size)")
    p.add_argument("--mask-rate", type=float, default=0.15, help="fraction of gene tokens masked (default 0.15)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--checkpoint-dir", required=True, help="folder for resumable checkpoints (last.ckpt)")
    p.add_argument("--out-dir", required=True, help="folder for model.pt and metrics.tsv")


def read_coefficients(path: Path) -> tuple[float, list[float]]:
    """``(beta, coefficients)`` from spectral ``coefficients.json``; InputError if malformed."""
    try:
        obj = json.loads(path.read_text())
        beta, coeffs = float(obj["beta"]), [float(c) for c in obj["coefficients"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: expected JSON with numeric 'beta' and list 'coefficients' ({err})") from err
    if not coeffs or not all(math.isfinite(c) for c in coeffs) or not beta > 0:
        raise InputError(f"{path}: 'coefficients' must be a non-empty list of finite numbers and beta > 0")
    return beta, coeffs


def _shard_n_bins(path: Path) -> int:
    try:
        with np.load(path, allow_pickle=False) as z:
            n_bins = int(z["n_bins"])
            bins = z["bins"]
            gene_ids = z["gene_ids"]
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{path}: not a token shard with keys n_bins, bins, gene_ids ({err})") from err
    if bins.size and (bins.min() < 0 or bins.max() > n_bins):
        raise InputError(f"{path}: field bins must be in 0..n_bins={n_bins}")
    return n_bins


def run(args: argparse.Namespace) -> None:
    from . import data

    tokens = Path(args.tokens_dir)
    train_path = require_file(tokens / "train.npz", "train token shard")
    val_path = require_file(tokens / "val.npz", "val token shard")
    vocab_path = require_file(tokens / "vocab.tsv", "token vocabulary")
    coef_path = require_file(args.coefficients, "spectral coefficients")
    vocab = data.read_vocab(vocab_path)
    beta, coeffs = read_coefficients(coef_path)
    n_bins = _shard_n_bins(train_path)
    if _shard_n_bins(val_path) != n_bins:
        raise InputError(f"{val_path}: n_bins differs from {train_path}")
    for name, v in (("--max-epochs", args.max_epochs), ("--batch-size", args.batch_size),
                    ("--threads", args.threads)):
        if v is not None and v < 1:
            raise InputError(f"{name} must be >= 1, got {v}")
    if not 0.0 < args.mask_rate < 1.0:
        raise InputError(f"--mask-rate must be in (0, 1), got {args.mask_rate}")
    base = PRESETS[args.preset]
    order = min(base.chebyshev_max_order, len(coeffs) - 1)
    config = preset(args.preset, attention=args.model, vocab_size=len(vocab), n_bins=n_bins, beta=beta,
                    chebyshev_order=order, coefficients=coeffs[: order + 1], max_epochs=args.max_epochs,
                    batch_size=args.batch_size, mask_rate=args.mask_rate, seed=args.seed)
    train_ds, val_ds = data.TokenDataset(train_path), data.TokenDataset(val_path)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise InputError(f"{tokens}: train.npz and val.npz must hold at least one cell each")
    torch.set_num_threads(args.threads)
    log.info("training %s (%s preset) on %d train / %d val cells, %d genes, K=%d", args.model, args.preset,
             len(train_ds), len(val_ds), len(vocab) - 2, order)
    model, history, summary = fit(config, train_ds, val_ds, data.collate, args.checkpoint_dir,
                                  fingerprint_files=[train_path, val_path, vocab_path])
    out = Path(args.out_dir)
    with atomic_path(out / "model.pt") as tmp:
        torch.save({"config": config.to_dict(), "state_dict": model.state_dict(), "vocab": vocab}, tmp)
    with atomic_path(out / "metrics.tsv") as tmp:
        lines = ["\t".join(METRIC_COLUMNS)]
        for row in history:
            lines.append(f"{row['epoch']}\t{row['train_loss']:.6f}\t{row['val_loss']:.6f}\t"
                         f"{row['val_masked_accuracy']:.6f}")
        tmp.write_text("\n".join(lines) + "\n")
    write_json(Path(args.checkpoint_dir) / "report.json", {
        "model": args.model, "preset": args.preset, "train_cells": len(train_ds), "val_cells": len(val_ds),
        "vocab_size": len(vocab), "n_bins": n_bins, "beta": beta, "chebyshev_order": order,
        "chebyshev_order_by_tolerance": len(coeffs) - 1, "chebyshev_max_order": base.chebyshev_max_order,
        "epoch_seconds": [row["seconds"] for row in history], **summary,
    })
