"""The workflow on a live one-node Slurm cluster (tests/slurm/cluster.sh), and `cellgraph install-profile`.

The cluster tests need Debian's slurm-wlm and munge installed (``apt-get install -y slurmctld slurmd
slurm-client munge``) and root; where they are missing the tests are skipped with the reason printed.
The cluster is started once for this module and stopped in the fixture's finaliser.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cellgraph import cli
from cellgraph.cli.profile import install_profile

from test_distributed import max_weight_difference
from test_workflow import tiny_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
TEST_PROFILE = REPO / "tests" / "slurm" / "profile"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
SKIP_FILES = {"report.json"}  # timings and absolute paths
SKIP_DIRS = {"logs", "benchmarks", "checkpoints", "figures", ".snakemake"}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def _missing_slurm() -> str | None:
    missing = [c for c in ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue") if not shutil.which(c)]
    if missing:
        return ("Slurm packages not installed (missing " + ", ".join(missing) + "); "
                "apt-get install -y slurmctld slurmd slurm-client munge")
    if os.geteuid() != 0:
        return "the test cluster needs root (it starts munged, slurmctld, slurmd)"
    return None


@pytest.fixture(scope="module")
def cluster(request):
    reason = _missing_slurm()
    if reason:
        print(f"SKIPPED test_slurm: {reason}")
        pytest.skip(reason)
    started = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=120)
    request.addfinalizer(lambda: subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, timeout=120))
    assert started.returncode == 0, started.stdout + started.stderr
    return started.stdout


def snakemake(workdir: Path, config: Path, *extra: str, timeout: int = 900) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", str(config), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)
    return proc, time.perf_counter() - t0


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """The tiny real-data config, run locally and through the Slurm test profile; wall times in seconds."""
    base = tmp_path_factory.mktemp("slurm_runs")
    # the tiny config's own grn settings (single cells, 10 bootstraps); the permuted-data control is not
    # what this test is about
    grn = {"control_permutations": 0}
    # train on 1 thread: the 2-rank Slurm job below then runs each rank with the same thread count
    # no pretraining corpus: the 2-rank equivalence bound below is for ~30 AdamW steps on the labelled cells
    config = tiny_config(base, grn=grn, train={"max_epochs": 1, "threads": 1}, evaluate={"n_splits": 2},
                         data={"pretrain": None})
    local, slurm = base / "local", base / "slurm"
    local.mkdir()
    slurm.mkdir()
    proc, t_local = snakemake(local, config, "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-5000:]
    proc, t_slurm = snakemake(slurm, config, "--workflow-profile", str(TEST_PROFILE))
    assert proc.returncode == 0, proc.stderr[-8000:]
    print(f"tiny workflow wall time: local {t_local:.0f} s, Slurm {t_slurm:.0f} s")
    return {"local": local / "results", "slurm": slurm / "results", "config": config, "slurm_dir": slurm,
            "log": proc.stderr, "times": (t_local, t_slurm)}


def _close(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert (np.isnan(a) and np.isnan(b)) or np.isclose(a, b, rtol=1e-6, atol=1e-9), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def compare_file(a: Path, b: Path) -> str:
    """Assert two result files hold the same data (numerically); returns the kind compared."""
    name = a.name
    if name.endswith(".npz"):
        with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
            assert set(x.files) == set(y.files), name
            for k in x.files:
                if x[k].dtype.kind in "fc":
                    np.testing.assert_allclose(y[k], x[k], rtol=1e-6, atol=1e-9, err_msg=f"{name}:{k}")
                else:
                    np.testing.assert_array_equal(y[k], x[k], err_msg=f"{name}:{k}")
        return "npz"
    if name.endswith(".json"):
        _close(json.loads(a.read_text()), json.loads(b.read_text()), name)
        return "json"
    if name.endswith((".tsv", ".tsv.gz", ".csv", ".txt")) or name.endswith(".txt.gz"):
        sep = "," if ".csv" in name else "\t"
        try:
            x, y = pd.read_csv(a, sep=sep), pd.read_csv(b, sep=sep)
        except pd.errors.EmptyDataError:
            assert a.read_bytes() == b.read_bytes(), name
            return "text"
        pd.testing.assert_frame_equal(y, x, check_exact=False, rtol=1e-6, atol=1e-9, obj=name)
        return "table"
    if name.endswith(".parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(b), pd.read_parquet(a), check_exact=False, rtol=1e-6,
                                      atol=1e-9, obj=name)
        return "table"
    if name.endswith(".pt"):
        x = torch.load(a, map_location="cpu", weights_only=True)
        y = torch.load(b, map_location="cpu", weights_only=True)
        assert x.keys() == y.keys() and x.get("config") == y.get("config") and x.get("vocab") == y.get("vocab")
        for k, t in x["state_dict"].items():
            torch.testing.assert_close(y["state_dict"][k], t, rtol=1e-6, atol=1e-7, msg=f"{name}:{k}")
        return "model"
    if name.endswith(".h5ad"):
        import anndata as ad

        x, y = ad.read_h5ad(a), ad.read_h5ad(b)
        assert (x.obs_names == y.obs_names).all() and (x.var_names == y.var_names).all(), name
        pd.testing.assert_frame_equal(y.obs, x.obs, check_exact=False, rtol=1e-6, obj=f"{name} obs")
        xa = x.X.toarray() if hasattr(x.X, "toarray") else np.asarray(x.X)
        ya = y.X.toarray() if hasattr(y.X, "toarray") else np.asarray(y.X)
        np.testing.assert_allclose(ya, xa, rtol=1e-6, atol=1e-9, err_msg=name)
        return "h5ad"
    if name.endswith(".md"):
        return "skipped"  # the markdown renderings of the csv tables compared above
    assert a.read_bytes() == b.read_bytes(), name
    return "bytes"


def test_workflow_on_slurm_equals_local_run(runs):
    local, slurm = runs["local"], runs["slurm"]
    files = sorted(p.relative_to(local) for p in local.rglob("*")
                   if p.is_file() and p.name not in SKIP_FILES and not SKIP_DIRS & set(p.relative_to(local).parts))
    other = sorted(p.relative_to(slurm) for p in slurm.rglob("*")
                   if p.is_file() and p.name not in SKIP_FILES and not SKIP_DIRS & set(p.relative_to(slurm).parts))
    assert files == other
    kinds = {rel.as_posix(): compare_file(local / rel, slurm / rel) for rel in files}
    assert {"npz", "json", "table", "model", "h5ad"} <= set(kinds.values())
    assert kinds["train/gremln/model.pt"] == "model" and kinds["tables/table1_cell_type.csv"] == "table"
    for name in ("confusion_matrices", "roc_pr_curves", "linear_probe"):  # figures exist (not compared)
        assert (slurm / f"figures/{name}.png").stat().st_size > 1000
    # the jobs really went through Slurm: the executor logged sbatch job ids
    assert "Job " in runs["log"] and "has been submitted with SLURM jobid" in runs["log"]
    t_local, t_slurm = runs["times"]
    print(f"tiny workflow: local {t_local:.0f} s, Slurm {t_slurm:.0f} s")


def test_two_process_training_as_slurm_job(runs):
    """`srun -n 2` inside one Slurm job: 2 DDP ranks reach the 1-process weights of the local run."""
    workdir = runs["slurm_dir"]
    shutil.rmtree(runs["slurm"] / "checkpoints/gremln")
    proc, seconds = snakemake(workdir, runs["config"], "--workflow-profile", str(TEST_PROFILE),
                              "--set-resources", "train:tasks=2", "train:mpi=srun", "train:mem_mb=4000",
                              "--forcerun", "train", "--",
                              "results/train/gremln/model.pt")
    assert proc.returncode == 0, proc.stderr[-8000:]
    assert "srun -n 2 --ntasks-per-node=2 cellgraph train" in proc.stdout + proc.stderr
    report = json.loads((runs["slurm"] / "checkpoints/gremln/report.json").read_text())
    assert report["world_size"] == 2 and report["resumed_from"] is None
    log = (runs["slurm"] / "logs/train_gremln.log").read_text()
    assert "2 rank(s)" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    diff = max_weight_difference(runs["local"] / "train/gremln/model.pt", runs["slurm"] / "train/gremln/model.pt")
    print(f"Slurm 2-rank job: {seconds:.0f} s, max |w_local,1 proc - w_slurm,2 ranks| = {diff:.2g}")
    # ~30 AdamW steps of the demo preset on ~1,000 cells: float reduction order differs between one process
    # and two ranks (gloo all-reduce); measured 1.2e-5. The 1e-5 bound on the demo
    # preset with few cells is test_distributed.py's
    assert diff < 5e-5
    a = pd.read_csv(runs["local"] / "train/gremln/metrics.tsv", sep="\t")
    b = pd.read_csv(runs["slurm"] / "train/gremln/metrics.tsv", sep="\t")
    pd.testing.assert_frame_equal(b, a, check_exact=False, atol=2e-5)


# --------------------------------------------------------------------------------------------------
# What a job gets: threads, CPUs and GPUs seen inside each job of a small workflow (seconds, not minutes)
# --------------------------------------------------------------------------------------------------

# The rule shell records, from inside the job: Snakemake's {threads}; nproc (which follows OMP_NUM_THREADS,
# set by Snakemake to the rule's threads); the CPUs the process may run on (Cpus_allowed_list: the CPUs
# Slurm bound the job step to, task/affinity); SLURM_CPUS_PER_TASK when the job step sets it;
# CUDA_VISIBLE_DEVICES; and Slurm's own record of the job (scontrol show job -d: NumCPUs, JOB_GRES, GRES
# indices), looked up by SLURM_JOB_ID, which the job-step plugin keeps.
_RECORD = (
    'echo "threads={threads}" > {output}; '
    'echo "nproc=$(nproc)" >> {output}; '
    'echo "cpus_allowed=$(awk \'/^Cpus_allowed_list/ {{print $2}}\' /proc/self/status)" >> {output}; '
    'echo "slurm_cpus_per_task=${{SLURM_CPUS_PER_TASK:-unset}}" >> {output}; '
    'echo "cuda_visible_devices=${{CUDA_VISIBLE_DEVICES:-unset}}" >> {output}; '
    'echo "slurm_job_id=${{SLURM_JOB_ID:-unset}}" >> {output}; '
    'if [ -n "${{SLURM_JOB_ID:-}}" ]; then scontrol show job -d "$SLURM_JOB_ID" >> {output}; fi'
)

# rule -> (profile set-threads, profile set-resources, expected {threads}, CPUs, GPUs inside the job).
# Every rule says `threads: 1` in the Snakefile; the profile's set-threads must be what the job gets.
# CPUs: cpus_per_task if given, else cpus_per_gpu x GPUs for GPU rules, else the rule's threads.
_JOBS = {
    "plain": (1, {}, 1, 1, 0),
    "threads2": (2, {}, 2, 2, 0),                                   # --cpus-per-task=threads
    "cpus_per_task2": (1, {"cpus_per_task": 2}, 1, 2, 0),         # more CPUs than threads
    "gpu1": (1, {"gpu": 1, "cpus_per_gpu": 1}, 1, 1, 1),           # --gpus=1 --cpus-per-gpu=1
    "gpu2": (2, {"gpu": 2, "cpus_per_gpu": 1}, 2, 2, 2),           # 2 GPUs x 1 CPU each, 2 threads
    "gres_gpu2": (2, {"gres": "gpu:2"}, 2, 2, 2),                  # --gres=gpu:2, --cpus-per-task=threads
    # fewer CPUs than threads: Snakemake in the job caps the threads at the CPUs the job step may use
    "threads2_cpus1": (2, {"cpus_per_task": 1}, 1, 1, 0),
}


def _cpu_list_size(text: str) -> int:
    """Number of CPUs in a list such as '0-1,4'."""
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def _read_record(path: Path) -> dict:
    text = path.read_text()
    rec = dict(line.split("=", 1) for line in text.splitlines()[:6])
    scontrol = text.split("\n", 6)[6] if text.count("\n") > 6 else ""
    num_cpus = re.search(r"\bNumCPUs=(\d+)", scontrol)
    job_gres = re.search(r"\bJOB_GRES=(\S+)", scontrol)
    rec["slurm_num_cpus"] = int(num_cpus.group(1)) if num_cpus else None
    rec["slurm_job_gres"] = job_gres.group(1) if job_gres else None
    return rec


def test_slurm_jobs_get_the_threads_cpus_and_gpus_the_profile_asks_for(cluster, tmp_path):
    """A small workflow through `--executor slurm`: inside each job, {threads}, the CPUs the job may use,
    Slurm's CPU count and GPUs (CUDA_VISIBLE_DEVICES, JOB_GRES) equal what the profile's set-threads and
    set-resources ask for."""
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(
        f"RECORD = {_RECORD!r}\n"
        f"NAMES = {list(_JOBS)!r}\n"
        "rule all:\n"
        "    input: expand('seen/{name}.txt', name=NAMES)\n"
        "    localrule: True\n"
        "for _name in NAMES:\n"
        "    rule:\n"
        "        name: _name\n"
        "        output: f'seen/{_name}.txt'\n"
        "        threads: 1\n"
        "        shell: RECORD\n"
    )
    # the test cluster's profile with set-threads / set-resources per rule, as profiles/slurm does for its rules
    profile = yaml.safe_load((TEST_PROFILE / "config.yaml").read_text())
    profile["set-threads"] = {name: job[0] for name, job in _JOBS.items()}
    profile["set-resources"] = {name: job[1] for name, job in _JOBS.items() if job[1]}
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile/config.yaml").write_text(yaml.safe_dump(profile))
    cmd = [*SNAKEMAKE, "-s", str(snakefile), "-d", str(tmp_path), "--workflow-profile", str(tmp_path / "profile")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-8000:]
    assert proc.stderr.count("has been submitted with SLURM jobid") == len(_JOBS)
    print(f"{len(_JOBS)} Slurm jobs in {seconds:.0f} s; profile -> expected (threads, CPUs, GPUs) -> seen in the job:")
    seen = {}
    for name, (set_threads, resources, threads, cpus, gpus) in _JOBS.items():
        rec = _read_record(tmp_path / f"seen/{name}.txt")
        devices = [] if rec["cuda_visible_devices"] == "unset" else rec["cuda_visible_devices"].split(",")
        seen[name] = {
            "threads": int(rec["threads"]),
            "nproc": int(rec["nproc"]),
            "cpus_allowed": _cpu_list_size(rec["cpus_allowed"]),
            "slurm_num_cpus": rec["slurm_num_cpus"],
            "slurm_cpus_per_task": rec["slurm_cpus_per_task"],
            "cuda_visible_devices": len(devices),
            "slurm_job_gres": rec["slurm_job_gres"],
        }
        print(f"  {name}: set-threads {set_threads} {resources} -> ({threads}, {cpus}, {gpus}) -> {seen[name]}")
    for name, (_, _, threads, cpus, gpus) in _JOBS.items():
        got = seen[name]
        assert got["slurm_num_cpus"] is not None, f"{name}: no scontrol record (SLURM_JOB_ID not visible?)"
        assert got["threads"] == threads, (name, got)
        assert got["nproc"] == threads, (name, got)  # OMP_NUM_THREADS = the rule's threads
        assert got["slurm_num_cpus"] == cpus, (name, got)
        assert got["cpus_allowed"] == cpus, (name, got)  # the job step is bound to its CPUs
        assert got["cuda_visible_devices"] == gpus, (name, got)
        assert got["slurm_job_gres"] == (f"gpu:{gpus}" if gpus else "(null)"), (name, got)


# --------------------------------------------------------------------------------------------------
# install-profile (no cluster needed)
# --------------------------------------------------------------------------------------------------


def test_install_profile_makes_profile_slurm_resolvable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert cli.main(["install-profile"]) == 0
    dest = tmp_path / "xdg/snakemake/slurm"
    assert (dest / "config.yaml").read_bytes() == (REPO / "profiles/slurm/config.yaml").read_bytes()
    assert str(dest) in capsys.readouterr().out
    assert cli.main(["install-profile"]) == 0  # rerunning over an identical copy is fine
    (dest / "config.yaml").write_text("executor: local\n")
    assert cli.main(["install-profile"]) == 2  # a user's edited profile is not overwritten silently
    assert "--force" in capsys.readouterr().err
    assert (dest / "config.yaml").read_text() == "executor: local\n"
    assert cli.main(["install-profile", "--force"]) == 0
    cfg = yaml.safe_load((dest / "config.yaml").read_text())
    assert cfg["executor"] == "slurm"
    with pytest.raises(Exception, match="config.yaml"):
        install_profile(tmp_path / "nowhere", "x")


def test_install_profile_outside_an_editable_install(tmp_path, monkeypatch):
    """A non-editable install has no repository next to the package: the clone in the current folder is used,
    else one clear error asks for --source."""
    import cellgraph.cli.profile as prof

    monkeypatch.setattr(prof, "REPO", tmp_path / "site-packages")  # as installed from a wheel
    with pytest.raises(Exception, match="--source") as err:
        prof.default_profile_source(cwd=tmp_path / "elsewhere")
    assert "site-packages" in str(err.value) and "elsewhere" in str(err.value)
    assert prof.default_profile_source(cwd=REPO) == REPO / "profiles" / "slurm"
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert cli.main(["install-profile"]) == 0
    installed = tmp_path / "xdg/snakemake/slurm/config.yaml"
    assert installed.read_bytes() == (REPO / "profiles/slurm/config.yaml").read_bytes()


def test_profile_slurm_by_name_plans_the_paper_workflow(tmp_path):
    """`snakemake --profile slurm` (installed) and `--workflow-profile profiles/slurm` plan the paper run."""
    env = _env()
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    install_profile(REPO / "profiles/slurm", "slurm", config_dir=tmp_path / "xdg/snakemake")
    plans = {}
    for how in (["--profile", "slurm"], ["--workflow-profile", str(REPO / "profiles/slurm")]):
        proc = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(REPO), "--configfile",
                               str(REPO / "config/paper.yaml"), *how, "-n", "-p"],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        out = proc.stdout + proc.stderr
        stats = out[out.index("Job stats:"): out.index("total")]
        counts = dict(line.split() for line in stats.splitlines()[3:] if line.strip())
        train = [line for line in out.splitlines() if "mpi=srun" in line]
        plans[how[0]] = (counts, {frozenset(line.split("resources:")[1].strip().split(", ")) for line in train})
        assert "srun -n 4 --ntasks-per-node=4 cellgraph train" in out and "--devices 4 --num-nodes 1" in out
        assert "config/paper.yaml" in out or "results/paper" in out
    counts, train = plans["--profile"]
    # the paper's data: Human Immune downloaded and converted, the Census corpus built
    # Human Immune downloaded (Adamson too), myeloid by hand, all four converted; three transfer sets
    assert counts == {"download_dataset": "2", "manual_dataset": "2", "convert_dataset": "4", "corpus": "1",
                      "heldout_cells": "1", "expression": "1", "networks": "1", "grn": "1", "spectral": "1",
                      "tokenize": "1", "train": "2", "evaluate": "2", "transfer_tokens": "3",
                      "transfer_evaluate": "6", "transfer_table": "1", "figures": "1", "all": "1"}
    assert len(train) == 1 and {"gpu=4", "tasks=4", "tasks_per_gpu=1", "mpi=srun", "cpus_per_gpu=8", "runtime=120",
                                "slurm_partition=CHANGE_ME_gpu_partition"} <= next(iter(train))
    assert plans["--profile"] == plans["--workflow-profile"]


def test_profile_slurm_gives_diffusion_training_one_gpu(tmp_path):
    """The diffusion training rule asks the Slurm profile for one GPU (bf16 autocast on CUDA in the stage)."""
    proc = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(REPO), "--configfile",
                           str(REPO / "config/paper.yaml"), "--workflow-profile", str(REPO / "profiles/slurm"),
                           "-n", "-p", "--config", f"results={tmp_path / 'res'}", "--", "diffusion"],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    blocks = [b for b in out.split("\n\n") if "rule diffusion_train:" in b]
    assert len(blocks) == 2  # pbmc and papalexi
    for b in blocks:
        res = next(line for line in b.splitlines() if "resources:" in line)
        assert "gpu=1" in res and "slurm_partition=CHANGE_ME_gpu_partition" in res and "cpus_per_gpu=8" in res


def test_slurm_profile_dry_run_plans_the_profiles_threads(tmp_path):
    """`snakemake -n --workflow-profile profiles/slurm` on the tiny config plans grn, train and evaluate with
    the profile's set-threads (not --cores 1 of a dry run), and each of those rules asks Slurm for at least
    as many CPUs per task as it has threads."""
    slurm = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    config = tiny_config(tmp_path)
    proc = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile", str(config),
                           "--workflow-profile", str(REPO / "profiles/slurm"), "-n", "-p"],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    planned: dict[str, set[int]] = {}
    for block in out.split("\n\n"):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        if rule and rule.group(1) in ("grn", "train", "evaluate"):
            planned.setdefault(rule.group(1), set()).add(int(threads.group(1)) if threads else 1)
    assert planned == {rule: {slurm["set-threads"][rule]} for rule in ("grn", "train", "evaluate")}, planned
    commands = {m.group(1): int(m.group(2)) for m in re.finditer(r"cellgraph (grn|train) .*?--threads (\d+)", out)}
    assert commands == {"grn": slurm["set-threads"]["grn"], "train": slurm["set-threads"]["train"]}, commands
    # CPUs Slurm gives each task of the job (the plugin's rule: cpus_per_task, else cpus_per_gpu x GPUs spread
    # over the job's tasks, else threads) cover the threads the profile sets
    for rule, threads in slurm["set-threads"].items():
        res = slurm["set-resources"].get(rule, {})
        if "cpus_per_task" in res:
            cpus = res["cpus_per_task"]
        elif "cpus_per_gpu" in res:
            cpus = res["cpus_per_gpu"] * res["gpu"] // res.get("tasks", 1)
        else:
            cpus = threads
        assert cpus >= threads, (rule, cpus, threads)
    assert slurm["cores"] >= max(slurm["set-threads"].values())
