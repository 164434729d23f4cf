"""Training killed with SIGKILL inside an epoch resumes from its last checkpoint and ends as if never killed."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from cellgraph.training.pretrain import select_checkpoint

from test_distributed import clean_env, train_cmd, write_token_dir

# 19 train cells, batch 4: 5 steps per epoch, 2 epochs; checkpoints every 2 steps (2, 4 | 6, 8) and per epoch
STALL = '''
import pathlib, sys, time
import lightning.pytorch as pl
import cellgraph.training.pretrain as train
from cellgraph import cli

marker, at = pathlib.Path(sys.argv[1]), int(sys.argv[2])

class Stall(pl.Callback):  # stands for a node failure: the process stops after step `at` and gets killed
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == at:
            marker.write_text(str(trainer.global_step))
            time.sleep(600)

fit = train.fit
train.fit = lambda *a, **k: fit(*a, **{**k, "callbacks": [Stall()]})
sys.exit(cli.main(sys.argv[3:]))
'''


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_sigkill_mid_epoch_then_rerun_equals_uninterrupted_run(tmp_path):
    tokens = write_token_dir(tmp_path / "tokens")
    env = clean_env()
    extra = ("--checkpoint-every-n-steps", "2")
    # the uninterrupted reference
    ref = subprocess.run(train_cmd(tokens, tmp_path / "ref", *extra, batch=4), capture_output=True, text=True,
                         env=env, timeout=300)
    assert ref.returncode == 0, ref.stderr[-4000:]

    # the same run, killed after step 7 = step 2 of epoch 2 (newest checkpoint: step 6)
    script = tmp_path / "stall.py"
    script.write_text(STALL)
    marker = tmp_path / "stalled"
    cmd = train_cmd(tokens, tmp_path / "run", *extra, batch=4)[1:]
    victim = subprocess.Popen([sys.executable, str(script), str(marker), "7", *cmd], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert victim.poll() is None, victim.stderr.read()[-4000:]
        assert time.monotonic() < deadline, "training never reached step 7"
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    ck = tmp_path / "run/ck"
    assert not (tmp_path / "run/model/model.pt").exists()
    assert sorted(p.name for p in ck.glob("*.ckpt")) == ["epoch=000.ckpt", "last.ckpt", "step000004.ckpt",
                                                         "step000006.ckpt"]  # the newest 2 step checkpoints
    # a copy whose newest checkpoint is truncated (as by a kill while writing it)
    shutil.copytree(tmp_path / "run", tmp_path / "torn")
    torn = tmp_path / "torn/ck/step000006.ckpt"
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    assert select_checkpoint(tmp_path / "torn/ck", "no-such-fingerprint")[0] is None

    for name, expected in (("run", "step000006.ckpt"), ("torn", "last.ckpt")):
        proc = subprocess.run(train_cmd(tokens, tmp_path / name, *extra, batch=4), capture_output=True, text=True,
                              env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert f"resuming from {tmp_path / name / 'ck' / expected}" in proc.stderr
        if name == "torn":
            assert f"{torn}: unreadable checkpoint skipped" in proc.stderr
            assert (tmp_path / "torn/ck/step000006.ckpt.corrupt").exists()
        a, b = state(tmp_path / "ref/model/model.pt"), state(tmp_path / name / "model/model.pt")
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
        assert (tmp_path / name / "model/metrics.tsv").read_text() == (tmp_path / "ref/model/metrics.tsv").read_text()
