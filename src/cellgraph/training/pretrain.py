"""Stage ``train``: masked rank modelling with a GREmLN (graph-diffusion attention) or vanilla transformer.

A fraction ``mask_rate`` of each cell's real gene tokens (never CLS or padding) has its rank bin replaced by
``MASK``; the model predicts the original bin (``0..n_bins``) and the loss is the cross-entropy over the
masked positions only (GREmLN, Zhang et al. 2025, section 2.3). With ``gepc_weight`` > 0 the loss also holds
the cell-embedding objective of scGPT (GEPC; :meth:`cellgraph.models.gremln.GREmLN.gepc`, :func:`gepc_error`):
every vocabulary gene's bin predicted from the CLS state alone, so that the CLS state must summarise the
cell. ``metrics.tsv`` keeps reporting the cross-entropy alone. The mask of a cell is drawn from a
generator seeded by ``(seed, stream, epoch, cell_index)`` alone, so it does not depend on the batch the cell
lands in (validation uses a fixed mask, epoch 0 of its own stream). AdamW with a linear warm-up over the
first 10% of the steps, then cosine decay to 0 (paper appendix A.5). The loop, the per-epoch checkpoints
and resumption are Lightning's; a run resumes from ``<checkpoint-dir>/last.ckpt`` only if the fingerprint of
(hyper-parameters, token files) stored beside it matches the current one, and starts fresh otherwise.

Outputs (design.md section 6): ``<out-dir>/model.pt`` ``{"config", "state_dict", "vocab"}`` and
``<out-dir>/metrics.tsv`` (``epoch, train_loss, val_loss, val_masked_accuracy``); ``report.json`` with
timings and sizes goes to the checkpoint folder (not a declared output).

Data-parallel training (``--devices N --num-nodes M``): Lightning DDP (gloo on CPU, NCCL on GPU). Without an
outer launcher Lightning starts the N processes of a node itself; under ``torchrun`` or ``srun`` it reads
the ranks from the environment. The global batch ``batch_size`` is split evenly over the ranks by
:class:`ShardedBatchSampler` (every cell exactly once per epoch, the same cells per optimisation step as one
process), the loss of each rank is normalised by the global number of masked tokens, so the averaged
gradients equal those of one process with the same global batch; metrics are summed over the ranks and only
rank 0 writes files. Checkpoints (every epoch and, with ``--checkpoint-every-n-steps``, every k steps,
keeping the last 2) carry the run's fingerprint and the position in the epoch, so a killed run resumes
mid-epoch and ends with the weights and metrics of an uninterrupted one. They are read with
``torch.load(weights_only=True)``; an unreadable one is reported by name, renamed ``*.corrupt`` and the
next newest is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..io import atomic_path, write_json
from ..models.gremln import PRESETS, GREmLN, GREmLNConfig, bin_tokens, preset

log = logging.getLogger(__name__)

__all__ = ["mask_positions", "masked_step", "gepc_error", "MaskedRankModule", "ShardedBatchSampler", "fit",
           "fingerprint", "select_checkpoint", "read_coefficients", "shard_n_bins", "training_config",
           "pretraining_cells", "write_model_and_metrics"]

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

    Parameters
    ----------
    attention_mask : torch.Tensor
        Bool [B, 1+n]; True at real tokens, False at padding (position 0, CLS, is never masked).
    cell_index : torch.Tensor
        Int [B], the cells' indices in their dataset (seed of each cell's mask).
    mask_rate : float
        Fraction 0-1 of a cell's real gene tokens to mask.
    seed : int
        Run seed.
    epoch : int
        Epoch (validation: 0).
    stream : int
        ``TRAIN_STREAM`` (1) or ``VAL_STREAM`` (2).

    Returns
    -------
    torch.Tensor
        Bool [B, 1+n] on ``attention_mask``'s device; all False for a cell without real tokens.
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


def masked_step(model: GREmLN, batch: dict[str, torch.Tensor], mask: torch.Tensor,
                denominator: float | torch.Tensor | None = None,
                parts: dict[str, float] | None = None) -> tuple[torch.Tensor, int, int]:
    """Cross-entropy over masked positions, their number and the number predicted right.

    ``mask`` Bool [B, 1+n] from :func:`mask_positions`; the masked bins are replaced by ``MASK`` before the
    forward pass and the targets are the original bins (0..n_bins). Unmasked positions do not contribute.
    The loss is the mean over the masked positions, or their sum divided by ``denominator`` when given
    (data-parallel training: the global number of masked positions over the world size).

    When ``model.config.gepc_weight`` w > 0 the loss also holds w times the cell-embedding objective: the sum
    over the cells that have a masked position of :func:`gepc_error`, divided like the cross-entropy.

    Parameters
    ----------
    model : GREmLN
        The model; its ``config.n_bins`` sets the ``MASK`` token.
    batch : dict of str to torch.Tensor
        A design.md section 5 batch; ``batch["bins"]`` Long [B, 1+n] holds the target bins.
    mask : torch.Tensor
        Bool [B, 1+n], positions to mask and score.
    denominator : float or torch.Tensor, optional
        Divisor of the summed loss; ``None``: mean over the masked positions.
    parts : dict, optional
        Filled with the loss's terms as floats: ``cross_entropy`` (nats) and ``gepc`` (squared error, 0 when off).

    Returns
    -------
    tuple of (torch.Tensor, int, int)
        Scalar loss (cross-entropy, nats), number of masked positions, number whose argmax bin is right.
    """
    target = batch["bins"]
    inputs = dict(batch)
    inputs["bins"] = torch.where(mask, torch.full_like(target, bin_tokens(model.config.n_bins)["MASK"]), target)
    hidden = model.encode(inputs)
    logits = model.head(hidden)[mask].float()  # [M, n_bins + 1]
    tgt = target[mask]
    scale = max(tgt.numel(), 1) if denominator is None else denominator
    loss = F.cross_entropy(logits, tgt, reduction="sum") / scale
    gepc = torch.zeros((), device=loss.device)
    if model.config.gepc_weight > 0:
        gepc = gepc_error(model.gepc(hidden).float(), batch, model.config.n_bins, mask.any(1)).sum() / scale
    if parts is not None:
        parts["cross_entropy"], parts["gepc"] = float(loss.detach()), float(gepc.detach())
    return loss + model.config.gepc_weight * gepc, int(tgt.numel()), int((logits.argmax(-1) == tgt).sum())


def gepc_error(pred: torch.Tensor, batch: dict[str, torch.Tensor], n_bins: int,
               cells: torch.Tensor | None = None) -> torch.Tensor:
    """Per-cell sum of squared errors of a whole-vocabulary expression prediction (:meth:`GREmLN.gepc`).

    The target of cell ``b`` and gene ``g`` is ``bin / n_bins`` when ``g`` is one of the cell's gene tokens
    (the original bin, masked or not) and 0 otherwise; the sum runs over the genes (ids >= 2).

    Parameters
    ----------
    pred : torch.Tensor
        Float [B, V], predicted ``bin / n_bins``.
    batch : dict of str to torch.Tensor
        A design.md section 5 batch: ``gene_ids``, ``bins`` (original bins) and ``attention_mask`` [B, 1+n].
    n_bins : int
        The highest bin.
    cells : torch.Tensor, optional
        Bool [B], the cells scored (others give 0); all when None.

    Returns
    -------
    torch.Tensor
        Float [B], squared error in (bin / n_bins)^2 units.
    """
    real = batch["attention_mask"].bool().clone()
    real[:, 0] = False  # the CLS token carries no gene
    target = torch.zeros_like(pred)
    values = torch.where(real, batch["bins"].to(pred.dtype) / n_bins, torch.zeros((), dtype=pred.dtype,
                                                                                  device=pred.device))
    target.scatter_(1, torch.where(real, batch["gene_ids"], torch.zeros_like(batch["gene_ids"])), values)
    err = ((pred - target)[:, 2:] ** 2).sum(1)
    return err if cells is None else err * cells.to(err.dtype)


# --------------------------------------------------------------------------------------------------
# Lightning module
# --------------------------------------------------------------------------------------------------


def _lightning():
    import lightning.pytorch as pl

    return pl


@contextlib.contextmanager
def quiet_lightning():
    """No device banners, tips or known-harmless warnings from Lightning in a stage's log (warnings and
    errors still show).

    Yields
    ------
    None
        Inside the ``with`` block the ``lightning.pytorch`` logger is at WARNING and the listed warnings are
        ignored; both are restored on exit.
    """
    pl_log = logging.getLogger("lightning.pytorch")
    level = pl_log.level
    pl_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*treespec.*LeafSpec.*")
            warnings.filterwarnings("ignore", message=".*`srun` command is available.*")
            warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
            warnings.filterwarnings("ignore", message=".*LightningModule.*has parameters that were not used.*")
            yield
    finally:
        pl_log.setLevel(level)


class MaskedRankModule(_lightning().LightningModule):
    """Lightning wrapper: masked-rank loss, AdamW + warm-up/cosine schedule, per-epoch metric history.

    Batches may carry ``valid`` Bool [B] (False = padding cell of :class:`ShardedBatchSampler`, ignored).
    The loss of a rank is ``sum of its masked cross-entropies / (global masked count / world size)``, so
    DDP's gradient average equals the gradient of the global-batch mean. Metric sums are reduced over the
    ranks at the end of the epoch and saved (reduced) in mid-epoch checkpoints.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg = GREmLNConfig(**config)
        self.model = GREmLN(self.cfg)
        self.history: list[dict[str, float]] = []
        self.run_fingerprint: str | None = None
        self.total_steps: int | None = None  # optimiser steps of the whole run (learning-rate schedule)
        self.batches_done = 0  # training batches of the current epoch
        self._restored: tuple[int, list[float], int] | None = None  # (epoch, reduced sums, batches) mid-epoch
        self._reset("train")
        self._reset("val")

    def _reset(self, which: str) -> None:
        setattr(self, f"_{which}_acc", [0.0, 0, 0])  # sum of cross-entropy, count, correct
        if which == "train":
            self._t0 = time.perf_counter()

    def _reduce(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over the ranks (identity on one process)."""
        if self.trainer.world_size == 1:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        return self.trainer.strategy.reduce(t, reduce_op="sum").cpu().tolist()

    def _run(self, batch, stream: int, epoch: int, which: str) -> torch.Tensor:
        mask = mask_positions(batch["attention_mask"], batch["cell_index"], self.cfg.mask_rate, self.cfg.seed,
                              epoch, stream)
        if "valid" in batch:
            mask = mask & batch["valid"][:, None]
        denominator = None
        if which == "train":
            total = self._reduce([float(mask.sum())])[0]
            denominator = max(total, 1.0) / self.trainer.world_size
        parts: dict[str, float] = {}
        loss, n, correct = masked_step(self.model, batch, mask, denominator, parts)
        acc = getattr(self, f"_{which}_acc")
        ce_sum = parts["cross_entropy"] * (denominator if denominator is not None else n)
        acc[0] += ce_sum
        acc[1] += n
        acc[2] += correct
        return loss

    def on_train_epoch_start(self) -> None:  # not called when Lightning resumes inside an epoch
        """Reset the epoch's training sums, batch count and timer; when a mid-epoch checkpoint of this epoch was
        loaded, restore its metric sums and position instead (Lightning skips this hook when it resumes inside an
        epoch, so the restored state is then applied by :meth:`on_load_checkpoint`).
        """
        self._reset("train")
        self.batches_done = 0
        if (self._restored is not None and self._restored[0] == self.current_epoch
                and self._restored[2] < self.trainer.num_training_batches):
            self._apply_restored()
        self._restored = None

    def _apply_restored(self) -> None:
        """Metric sums (reduced; given to rank 0) and position of the epoch a checkpoint was taken in."""
        _, sums, done = self._restored
        self._train_acc = list(sums) if self.global_rank == 0 else [0.0, 0, 0]
        self.batches_done = done

    def training_step(self, batch, batch_idx):
        """Masked-rank loss of one training batch (mask of stream ``TRAIN_STREAM``, this epoch); returns the
        scalar loss, normalised by the global number of masked tokens over the world size (module docstring).

        ``batch`` is a design.md section 5 batch with ``cell_index`` and ``valid`` ([B]); the loss, masked count
        and correct predictions are added to the epoch's sums.
        """
        self.batches_done += 1
        return self._run(batch, TRAIN_STREAM, self.current_epoch, "train")

    def on_validation_epoch_start(self) -> None:
        """Reset the validation sums (cross-entropy, masked tokens, correct) of the epoch."""
        self._reset("val")

    def validation_step(self, batch, batch_idx):
        """Masked-rank loss of one validation batch with the fixed validation mask (stream ``VAL_STREAM``,
        epoch 0), so every epoch is scored on the same masked tokens; returns the mean cross-entropy over the
        batch's masked tokens and adds it to the validation sums.
        """
        return self._run(batch, VAL_STREAM, 0, "val")

    def on_train_epoch_end(self) -> None:  # runs after this epoch's validation
        """Append the epoch's metrics row (runs after the epoch's validation); rank 0 logs it.

        The sums are reduced over the ranks; the row has the 1-based ``epoch``, ``train_loss`` and ``val_loss``
        (mean cross-entropy per masked token, nats), ``val_masked_accuracy`` and ``seconds``; ``val_*`` are nan
        without validation tokens.
        """
        tr, va = self._reduce(self._train_acc), self._reduce(self._val_acc)
        row = {
            "epoch": int(self.current_epoch) + 1,
            "train_loss": tr[0] / max(tr[1], 1),
            "val_loss": va[0] / va[1] if va[1] else float("nan"),
            "val_masked_accuracy": va[2] / va[1] if va[1] else float("nan"),
            "seconds": time.perf_counter() - self._t0,
        }
        self.history.append(row)
        if self.global_rank == 0:
            log.info("epoch %d: train_loss %.4f val_loss %.4f val_masked_accuracy %.4f (%.1f s)", row["epoch"],
                     row["train_loss"], row["val_loss"], row["val_masked_accuracy"], row["seconds"])

    def on_save_checkpoint(self, checkpoint: dict) -> None:  # called on every rank
        """Store the metric history, the run fingerprint (``cellgraph_fingerprint``) and the position in the
        epoch (``train_progress``: epoch, batches done, metric sums reduced over the ranks) in ``checkpoint``.
        Called on every rank.
        """
        checkpoint["metrics_history"] = list(self.history)
        checkpoint["cellgraph_fingerprint"] = self.run_fingerprint
        checkpoint["train_progress"] = {"epoch": int(self.current_epoch), "batches_done": int(self.batches_done),
                                        "sums": self._reduce(self._train_acc)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the metric history and, from a checkpoint taken inside an epoch, the epoch's reduced metric
        sums and batches done (an end-of-epoch checkpoint's are reset by :meth:`on_train_epoch_start`).
        """
        self.history = list(checkpoint.get("metrics_history", []))
        prog = checkpoint.get("train_progress")
        if prog and 0 < prog["batches_done"]:
            self._restored = (int(prog["epoch"]), list(prog["sums"]), int(prog["batches_done"]))
            self._apply_restored()  # an end-of-epoch checkpoint: on_train_epoch_start resets it

    def configure_optimizers(self):
        """AdamW (betas 0.9, 0.95; weight decay on weights of dim >= 2 only) and a per-step schedule: linear
        warm-up over ``warmup_fraction`` of the run's optimiser steps, then cosine decay to 0 (GREmLN, Zhang et
        al. 2025, appendix A.5). Returns Lightning's optimiser/scheduler dict (``interval="step"``).
        """
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.cfg.lr, betas=(0.9, 0.95),
        )
        # set by fit(); trainer.estimated_stepping_batches would set up the train loader before a checkpoint's
        # loader state (the position inside the epoch) is restored
        total = self.total_steps or max(int(self.trainer.estimated_stepping_batches), 1)
        warm = max(int(round(self.cfg.warmup_fraction * total)), 1)

        def factor(step: int) -> float:
            """Learning-rate multiplier at optimiser step ``step``: ``(step + 1) / warm`` during warm-up, then
            ``0.5 (1 + cos(pi progress))`` with progress the fraction of the remaining steps done (capped at 1).
            """
            if step < warm:
                return (step + 1) / warm
            progress = min((step - warm) / max(total - warm, 1), 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# --------------------------------------------------------------------------------------------------
# Sharding the data over ranks
# --------------------------------------------------------------------------------------------------


class ShardedBatchSampler(torch.utils.data.Sampler):
    """Per-rank batches of a global batch: every cell exactly once per epoch, no duplicates, no gaps.

    Epoch ``e`` orders the ``n`` cells by ``torch.randperm(n, generator=manual_seed(seed + e))`` (or 0..n-1
    without ``shuffle``) and cuts the order into global batches of ``global_batch`` cells (the last one
    shorter); rank ``r`` of ``world_size`` gets positions ``r, r + W, r + 2W, ...`` of each global batch.
    When a global batch is not a multiple of ``W`` the missing places are ``-1`` (a padding cell that
    carries ``valid = False`` and contributes nothing), so every rank runs the same number of steps and the
    union over ranks of step ``k`` is exactly the ``k``-th batch of one process. ``skip`` batches at the
    start of epoch ``skip_epoch`` are left out (resumption inside an epoch).

    Raises ValueError if ``global_batch`` is not a positive multiple of ``world_size``.
    """

    def __init__(self, n: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if global_batch < world_size or global_batch % world_size:
            raise ValueError(f"batch size {global_batch} must be a positive multiple of the world size {world_size}")
        self.n, self.global_batch, self.rank, self.world_size = n, global_batch, rank, world_size
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self.skip, self.skip_epoch = 0, -1
        self.sampler = _EpochSetter(self)  # Lightning calls batch_sampler.sampler.set_epoch(e) every epoch

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s cell order (seed + epoch) from the next iteration on."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.n / self.global_batch)

    def global_order(self) -> list[int]:
        """The cell order of the current epoch over all ranks: ``torch.randperm(n)`` with a generator seeded by
        ``seed + epoch``, or ``0..n-1`` without ``shuffle``.
        """
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        order = self.global_order()
        start = self.skip if self.epoch == self.skip_epoch else 0  # every iterator of that epoch skips
        for k in range(start, len(self)):
            chunk = order[k * self.global_batch: (k + 1) * self.global_batch]
            chunk += [-1] * (-len(chunk) % self.world_size)
            yield chunk[self.rank:: self.world_size]


class _EpochSetter:
    def __init__(self, parent: ShardedBatchSampler):
        self.parent = parent

    def set_epoch(self, epoch: int) -> None:
        """Forward Lightning's ``sampler.set_epoch(epoch)`` to the parent :class:`ShardedBatchSampler`."""
        self.parent.set_epoch(epoch)


class _PaddedDataset(torch.utils.data.Dataset):
    """``ds[i]`` for ``i >= 0``; index ``-1`` is a padding cell (a copy of cell 0, flagged invalid)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return (self.ds[max(int(i), 0)], int(i) >= 0)


class _ValidCollate:
    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items):
        batch = self.collate([it for it, _ in items])
        batch["valid"] = torch.tensor([ok for _, ok in items], dtype=torch.bool)
        return batch


class _ResumableLoader(torch.utils.data.DataLoader):
    """A DataLoader over a :class:`ShardedBatchSampler` whose state (epoch, batches done) is checkpointed."""

    module: "MaskedRankModule | None" = None

    def state_dict(self) -> dict[str, int]:
        """The loader's position for a checkpoint: ``{"epoch", "batches_done"}`` of the attached module (the
        next epoch with 0 batches done once the epoch's batches are all done; zeros without a module).
        """
        m = self.module
        if m is None:
            return {"epoch": 0, "batches_done": 0}
        epoch, done = int(m.current_epoch), int(m.batches_done)
        if done >= len(self):
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at a checkpointed position: set the sampler's epoch and skip the ``batches_done`` batches
        already trained at the start of that epoch.
        """
        # called before Lightning creates the resumed epoch's iterator (and before its set_epoch)
        epoch = int(state.get("epoch", 0))
        self.batch_sampler.set_epoch(epoch)
        self.batch_sampler.skip, self.batch_sampler.skip_epoch = int(state.get("batches_done", 0)), epoch


def _loader(ds, collate, batch_size: int, rank: int, world: int, seed: int, shuffle: bool) -> _ResumableLoader:
    sampler = ShardedBatchSampler(len(ds), batch_size, rank, world, seed, shuffle)
    return _ResumableLoader(_PaddedDataset(ds), batch_sampler=sampler, collate_fn=_ValidCollate(collate))


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------


def fingerprint(config: dict[str, Any], files: Sequence[str | Path]) -> str:
    """SHA-256 over the JSON of ``config`` and the bytes of ``files``: what a checkpoint may resume from.

    Parameters
    ----------
    config : dict
        JSON-serialisable hyper-parameters (hashed with sorted keys).
    files : sequence of str or Path
        Files whose names and bytes are hashed, in the given order.

    Returns
    -------
    str
        Hex SHA-256 digest (64 characters).
    """
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for f in files:
        h.update(Path(f).name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _env_is_rank_zero() -> bool:
    """Whether the launcher's environment (torchrun, srun, Lightning's own launcher) makes this rank 0.

    Read before the process group exists; decides which process may rename or delete checkpoint files.
    """
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    ranks = [os.environ.get(v, "0") for v in ("RANK", "LOCAL_RANK", "NODE_RANK")]
    if slurm_tasks > 1:
        ranks.append(os.environ.get("SLURM_PROCID", "0"))
    return all(int(r or 0) == 0 for r in ranks)


def select_checkpoint(ckdir: Path, fp: str, cleanup: bool = False) -> tuple[Path | None, list[str]]:
    """The newest readable checkpoint of ``ckdir`` whose stored fingerprint is ``fp``, and problems met.

    Candidates ``*.ckpt`` are tried newest first (``last.ckpt`` wins a tie); each is read with
    ``torch.load(weights_only=True)``. An unreadable (corrupt, truncated) one is reported by name in the
    returned list and, with ``cleanup``, renamed ``<name>.corrupt``; one of another run (fingerprint
    differs) is deleted with ``cleanup``. Read-only without ``cleanup`` (ranks other than 0).

    Parameters
    ----------
    ckdir : Path
        Checkpoint folder (``*.ckpt`` files).
    fp : str
        Fingerprint of the current run (:func:`fingerprint`).
    cleanup : bool
        Rename unreadable and delete foreign checkpoints (rank 0 only).

    Returns
    -------
    tuple of (Path or None, list of str)
        The checkpoint to resume from (``None``: start fresh) and one message per unreadable checkpoint.
    """
    problems: list[str] = []
    found: Path | None = None
    cands = sorted(ckdir.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"), reverse=True)
    for path in cands:
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
            stored = ck.get("cellgraph_fingerprint")
        except Exception as err:  # noqa: BLE001 - any failure to read means: not usable
            problems.append(f"{path}: unreadable checkpoint skipped ({type(err).__name__}: {str(err)[:200]})")
            if cleanup:
                path.rename(path.with_name(path.name + ".corrupt"))
            continue
        if stored != fp:
            if cleanup:
                path.unlink()
            continue
        if found is None:
            found = path
            if not cleanup:
                break
    return found, problems


def _trainer(pl, config: GREmLNConfig, ckdir: Path, cuda: bool, callbacks: list, devices: int = 1,
             num_nodes: int = 1):
    """A quiet Lightning Trainer: no logger, progress bar or summary; checkpoints in ``ckdir``."""
    distributed = devices * num_nodes > 1
    strategy = "auto"
    if distributed:
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="nccl" if cuda else "gloo")
    return pl.Trainer(
        max_epochs=config.max_epochs,
        accelerator="gpu" if cuda else "cpu",
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        use_distributed_sampler=False,  # ShardedBatchSampler shards the data itself
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


def _step_checkpoint(every: int, ckdir: Path):
    """ModelCheckpoint every ``every`` optimiser steps inside an epoch, keeping the newest 2."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    class MidEpochCheckpoint(ModelCheckpoint):
        """ModelCheckpoint that saves every k training steps, but not after an epoch's last batch (the
        end-of-epoch checkpoint, written after validation, covers that step).
        """
        def on_train_batch_end(self, trainer, *args, **kwargs):
            """Save as ``ModelCheckpoint`` does, except after the last batch of an epoch."""
            if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
                return  # the end-of-epoch checkpoint (after validation) covers it
            super().on_train_batch_end(trainer, *args, **kwargs)

    return MidEpochCheckpoint(dirpath=str(ckdir), filename="step{step:06d}", monitor="step", mode="max",
                              save_top_k=2, every_n_train_steps=every, enable_version_counter=False,
                              auto_insert_metric_name=False)


def _resume_point(ckdir: Path, cfg: dict[str, Any], fingerprint_files: Sequence[str | Path]
                  ) -> tuple[str, Path | None, list[str]]:
    """The run's fingerprint, the checkpoint to resume from (``None``: start fresh) and the problems met.

    Problems are logged as warnings; rank 0 cleans up (:func:`select_checkpoint`) and, on a fresh start,
    writes ``<ckdir>/fingerprint.json``.
    """
    fp = fingerprint(cfg, fingerprint_files)
    fp_file = ckdir / "fingerprint.json"
    rank0 = _env_is_rank_zero()
    resume, problems = select_checkpoint(ckdir, fp, cleanup=rank0)
    for problem in problems:
        log.warning("%s", problem)
    if resume is None:
        if rank0:
            write_json(fp_file, {"fingerprint": fp, "config": cfg, "files": [str(f) for f in fingerprint_files]})
    else:
        log.info("resuming from %s", resume)
    return fp, resume, problems


def fit(config: GREmLNConfig, train_ds, val_ds, collate, checkpoint_dir: str | Path,
        fingerprint_files: Sequence[str | Path] = (), callbacks: Sequence[Any] = (), devices: int = 1,
        num_nodes: int = 1, checkpoint_every_n_steps: int | None = None
        ) -> tuple[GREmLN, list[dict[str, float]], dict[str, Any]]:
    """Train ``GREmLN(config)`` on ``train_ds``, validating on ``val_ds`` after every epoch.

    The newest readable checkpoint whose stored fingerprint equals :func:`fingerprint` of ``(config,
    fingerprint_files)`` is resumed (:func:`select_checkpoint`). CUDA with bf16 autocast when available,
    else CPU fp32.

    Parameters
    ----------
    config : GREmLNConfig
        Model and training settings; ``batch_size`` is the global batch.
    train_ds, val_ds : torch.utils.data.Dataset
        Items that ``collate`` turns into design.md section 5 batches (with ``cell_index``).
    collate : callable
        Batch builder for the items of both datasets.
    checkpoint_dir : str or Path
        Checkpoints every epoch (``last.ckpt``) and every ``checkpoint_every_n_steps`` steps; created.
    fingerprint_files : sequence of str or Path
        Input files hashed into the run's fingerprint.
    callbacks : sequence
        Extra Lightning callbacks.
    devices, num_nodes : int
        Devices per node and nodes; a product > 1 trains data-parallel (Lightning DDP).
    checkpoint_every_n_steps : int, optional
        Step interval of the mid-epoch checkpoints; ``None``: per epoch only.

    Returns
    -------
    tuple of (GREmLN, list of dict, dict)
        Trained model (eval mode, CPU, fp32), per-epoch metric rows (``epoch``, ``train_loss``, ``val_loss``
        in nats, ``val_masked_accuracy``, ``seconds``) and a run summary (device, resumed, ranks, seconds).

    Raises
    ------
    InputError
        If ``config.batch_size`` is not a multiple of ``devices * num_nodes``.
    """
    pl = _lightning()
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckdir = Path(checkpoint_dir)
    ckdir.mkdir(parents=True, exist_ok=True)
    world = devices * num_nodes
    if config.batch_size % world:
        raise InputError(f"batch size {config.batch_size} must be a multiple of devices x nodes = {world}")
    cfg = config.to_dict()
    fp, resume, problems = _resume_point(ckdir, cfg, fingerprint_files)

    pl.seed_everything(config.seed, workers=True, verbose=False)
    module = MaskedRankModule(cfg)
    module.run_fingerprint = fp
    cuda = torch.cuda.is_available()
    with quiet_lightning():
        cbs = [ModelCheckpoint(dirpath=str(ckdir), filename="{epoch:03d}", save_last=True, save_top_k=1,
                               every_n_epochs=1, enable_version_counter=False)]
        if checkpoint_every_n_steps:
            cbs.append(_step_checkpoint(checkpoint_every_n_steps, ckdir))
        trainer = _trainer(pl, config, ckdir, cuda, [*cbs, *callbacks], devices, num_nodes)
        rank, world = trainer.global_rank, trainer.world_size  # launchers from the environment are known here
        # per-epoch permutations seeded by (seed, epoch): the same order whether or not the run was resumed
        train_dl = _loader(train_ds, collate, config.batch_size, rank, world, config.seed, True)
        val_dl = _loader(val_ds, collate, config.batch_size, rank, world, config.seed, False)
        train_dl.module = module
        module.total_steps = max(len(train_dl) * config.max_epochs, 1)
        t0 = time.perf_counter()
        trainer.fit(module, train_dl, val_dl, ckpt_path=str(resume) if resume else None, weights_only=True)
    model = module.model.float().cpu().eval()
    summary = {"device": "cuda" if cuda else "cpu", "precision": "bf16-mixed" if cuda else "32-true",
               "resumed_from": str(resume) if resume else None, "skipped_checkpoints": problems,
               "fit_seconds": time.perf_counter() - t0, "global_rank": int(trainer.global_rank),
               "world_size": int(trainer.world_size), "global_batch": config.batch_size,
               "n_parameters": int(sum(p.numel() for p in model.parameters()))}
    return model, list(module.history), summary


# --------------------------------------------------------------------------------------------------
# Stage inputs and outputs (``cellgraph train`` in :mod:`cellgraph.cli.train` calls these)
# --------------------------------------------------------------------------------------------------


def read_coefficients(path: Path) -> tuple[float, list[float]]:
    """Heat-kernel ``beta`` and Chebyshev coefficients from the spectral stage's ``coefficients.json``.

    Parameters
    ----------
    path : JSON file with numeric ``beta`` and a list ``coefficients`` (:mod:`cellgraph.graphs.spectral`).

    Returns
    -------
    (beta, coefficients): float > 0 and a non-empty list of finite floats (``K + 1`` Chebyshev weights of
    ``exp(-beta L)``).

    Raises
    ------
    InputError
        If the file is not such JSON, a coefficient is not finite, the list is empty or beta <= 0.
    """
    try:
        obj = json.loads(path.read_text())
        beta, coeffs = float(obj["beta"]), [float(c) for c in obj["coefficients"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: expected JSON with numeric 'beta' and list 'coefficients' ({err})") from err
    if not coeffs or not all(math.isfinite(c) for c in coeffs) or not beta > 0:
        raise InputError(f"{path}: 'coefficients' must be a non-empty list of finite numbers and beta > 0")
    return beta, coeffs


def shard_n_bins(path: Path) -> int:
    """Number of expression bins ``n_bins`` of a token shard (tokenize stage ``*.npz``), checked.

    Parameters
    ----------
    path : token shard with (at least) the arrays ``n_bins`` (scalar), ``bins`` int [T] and ``gene_ids`` [T].

    Returns
    -------
    int, ``n_bins``; every token's bin lies in ``0..n_bins``.

    Raises
    ------
    InputError
        If the file cannot be read as such a shard or a bin lies outside ``0..n_bins``.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            n_bins = int(z["n_bins"])
            bins = z["bins"]
            z["gene_ids"]  # read only to fail (KeyError) when a shard lacks it
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{path}: not a token shard with keys n_bins, bins, gene_ids ({err})") from err
    if bins.size and (bins.min() < 0 or bins.max() > n_bins):
        raise InputError(f"{path}: field bins must be in 0..n_bins={n_bins}")
    return n_bins


def training_config(preset_name: str, attention: str, vocab_size: int, n_bins: int, beta: float,
                    coefficients: Sequence[float], max_epochs: int | None = None, batch_size: int | None = None,
                    mask_rate: float = 0.3, seed: int = 0, diffuse: str | None = None,
                    gepc_weight: float = 0.0) -> GREmLNConfig:
    """The configuration of one training run: preset ``preset_name`` with the data's sizes and the heat kernel.

    The Chebyshev expansion of the heat kernel ``exp(-beta L)`` (GREmLN, Zhang et al. 2025, section 2.2,
    eq. 4 and appendix A.3; Hammond, Vandergheynst & Gribonval 2011, eq. 3.8) is truncated at order
    ``K = min(preset's chebyshev_max_order, len(coefficients) - 1)``, keeping ``coefficients[:K + 1]``.

    Parameters
    ----------
    preset_name : a key of :data:`cellgraph.models.gremln.PRESETS` (``demo``, ``paper``).
    attention : ``gremln`` (heat-kernel query diffusion) or ``vanilla`` (plain attention).
    vocab_size : tokens of the vocabulary (genes + ``<pad>`` + ``<cls>``).
    n_bins : expression bins of the token shards.
    beta, coefficients : heat-kernel parameter and Chebyshev weights (:func:`read_coefficients`).
    max_epochs, batch_size : the preset's when None; ``batch_size`` is the global batch (cells).
    mask_rate : fraction of a cell's gene tokens masked (default 0.3).
    seed : seed of weights, shuffling and masks (default 0).
    diffuse : what the kernel diffuses (``queries``, ``queries+values``, ``gated``; the preset's when None;
        :mod:`cellgraph.models.gremln`).
    gepc_weight : weight of the cell-embedding objective (:meth:`cellgraph.models.gremln.GREmLN.gepc`); 0 = off.

    Returns
    -------
    GREmLNConfig, with ``chebyshev_order`` = K.
    """
    order = min(PRESETS[preset_name].chebyshev_max_order, len(coefficients) - 1)
    return preset(preset_name, attention=attention, vocab_size=vocab_size, n_bins=n_bins, beta=beta,
                  chebyshev_order=order, coefficients=list(coefficients)[: order + 1], max_epochs=max_epochs,
                  batch_size=batch_size, mask_rate=mask_rate, seed=seed, diffuse=diffuse,
                  gepc_weight=gepc_weight)


def pretraining_cells(tokens: Path, n_bins: int, pretrain_on: str):
    """The cells of masked pretraining in a tokenize output folder, and the files a run depends on.

    The unlabelled corpus shard ``pretrain.npz`` (tokenize --pretrain-adata) joins the labelled train cells
    (``pretrain_on`` "train+corpus"), or replaces them ("corpus": no cell of the evaluation data set is seen
    in pretraining, the GREmLN paper's protocol, Zhang et al. 2025, section 4.1).

    Parameters
    ----------
    tokens : folder with ``train.npz``, ``val.npz``, ``vocab.tsv`` and optionally ``pretrain.npz``.
    n_bins : expression bins of ``train.npz`` (:func:`shard_n_bins`).
    pretrain_on : ``"train+corpus"`` or ``"corpus"``.

    Returns
    -------
    (train dataset, val dataset, labelled train cells in the train dataset, fingerprint files): the
    datasets are :class:`cellgraph.io.shards.TokenDataset`; the files are the shards and vocabulary the
    run reads (for :func:`fingerprint`).

    Raises
    ------
    InputError
        If ``train.npz`` or ``val.npz`` holds no cell, the corpus shard's ``n_bins`` differs or "corpus"
        finds no corpus shard.
    """
    from ..io import shards as data

    train_path, val_path = tokens / "train.npz", tokens / "val.npz"
    train_ds, val_ds = data.TokenDataset(train_path), data.TokenDataset(val_path)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise InputError(f"{tokens}: train.npz and val.npz must hold at least one cell each")
    pretrain_path = tokens / "pretrain.npz"
    if pretrain_on == "corpus" and not pretrain_path.is_file():
        raise InputError(f"--pretrain-on corpus: {pretrain_path} is missing (tokenize with --pretrain-adata)")
    n_labelled = len(train_ds) if pretrain_on == "train+corpus" else 0
    if pretrain_path.is_file():
        pretrain_ds = data.TokenDataset(pretrain_path)
        if pretrain_ds.n_bins != n_bins:
            raise InputError(f"{pretrain_path}: n_bins differs from {train_path}")
        train_ds = data.TokenDataset.concat([train_ds, pretrain_ds]) if n_labelled else pretrain_ds
    shard_files = ([train_path] if n_labelled else []) + [val_path, tokens / "vocab.tsv"] + (
        [pretrain_path] if pretrain_path.is_file() else [])
    return train_ds, val_ds, n_labelled, shard_files


def write_model_and_metrics(out: Path, config: GREmLNConfig, model: GREmLN, vocab: Sequence[str],
                            history: Sequence[dict[str, float]]) -> None:
    """Write ``model.pt`` and ``metrics.tsv`` of a trained model into ``out`` (atomic; same bytes on a rerun).

    Parameters
    ----------
    out : output folder (design.md section 6).
    config, model, vocab : saved as ``{"config": config.to_dict(), "state_dict", "vocab"}``.
    history : per-epoch rows of :func:`fit` (``epoch, train_loss, val_loss, val_masked_accuracy``, losses in
        nats per masked token), written with 6 decimals.
    """
    # saved through a file object: torch names the archive's root folder after a path's file name, which for
    # the temporary name of atomic_path is random (a file object gives the fixed name "archive": same bytes)
    with atomic_path(out / "model.pt") as tmp, open(tmp, "wb") as fh:
        torch.save({"config": config.to_dict(), "state_dict": model.state_dict(), "vocab": vocab}, fh)
    with atomic_path(out / "metrics.tsv") as tmp:
        lines = ["\t".join(METRIC_COLUMNS)]
        for row in history:
            lines.append(f"{row['epoch']}\t{row['train_loss']:.6f}\t{row['val_loss']:.6f}\t"
                         f"{row['val_masked_accuracy']:.6f}")
        tmp.write_text("\n".join(lines) + "\n")
