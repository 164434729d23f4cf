"""Every thread pool of a stage is bounded by the threads its rule was given."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cellgraph import cli

PROBE = """
import json, numpy, torch, numba
from threadpoolctl import threadpool_info
from cellgraph.runtime import limit_thread_pools
before = {"torch": torch.get_num_threads(), "numba": numba.get_num_threads(),
          "blas": max(p["num_threads"] for p in threadpool_info())}
limit_thread_pools(1)
after = {"torch": torch.get_num_threads(), "numba": numba.get_num_threads(),
         "blas": max(p["num_threads"] for p in threadpool_info())}
print(json.dumps({"before": before, "after": after}))
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs >= 2 cores to see a pool shrink")
def test_limit_thread_pools_bounds_torch_numba_and_blas():
    env = {k: v for k, v in os.environ.items()
           if not k.endswith(("_NUM_THREADS", "MAXIMUM_THREADS"))}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert min(result["before"].values()) >= 2, result  # unbounded pools start at the core count
    assert result["after"] == {"torch": 1, "numba": 1, "blas": 1}, result


def test_limit_thread_pools_rejects_zero():
    from cellgraph.runtime import limit_thread_pools

    with pytest.raises(ValueError, match="threads must be >= 1"):
        limit_thread_pools(0)


@pytest.mark.parametrize("argv, env, expected", [
    (["expression", "--input", "missing.h5ad", "--out-dir", "o"], {"OMP_NUM_THREADS": "3"}, 3),
    (["grn", "--adata", "missing.h5ad", "--regulators", "r.txt", "--out-dir", "o", "--threads", "1"], {"OMP_NUM_THREADS": "2"}, 1),
    (["expression", "--input", "missing.h5ad", "--out-dir", "o"], {"OMP_NUM_THREADS": ""}, None),
])
def test_cli_bounds_pools_by_threads_flag_or_snakemake_environment(argv, env, expected, monkeypatch, tmp_path):
    """`--threads` wins; otherwise the OMP_NUM_THREADS Snakemake exports for the job; else nothing is set."""
    monkeypatch.chdir(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    seen = []
    monkeypatch.setattr(cli, "limit_thread_pools", lambda n: seen.append(n))
    assert cli.main(argv) == 2  # the missing input is reported after the pools are bounded
    assert seen == ([] if expected is None else [expected])


def test_numba_keeps_working_after_bounds_change():
    """Two stages in one process (as in the tests) with different --threads: numba re-reads its config
    on compilation and must not see a changed NUMBA_NUM_THREADS once its workers run."""
    code = ("import numba, numpy as np\nfrom cellgraph.runtime import limit_thread_pools\n"
            "@numba.njit(parallel=True)\ndef f(x):\n    s = 0.0\n    for i in numba.prange(x.size):\n"
            "        s += x[i]\n    return s\n"
            "limit_thread_pools(1); f(np.ones(10)); limit_thread_pools(2)\n"
            "numba.core.config.reload_config(); print(f(np.ones(10)), numba.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == "10.0"
