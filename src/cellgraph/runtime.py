"""Process-wide runtime settings: one bound on every thread pool a stage can start.

A Snakemake job is given ``threads`` cores; it must not start more busy threads than that, or a shared
node slows every job on it (on 2 cores under a load of 6-9, one demo training epoch went from about 3 s to
60-200 s). Snakemake exports ``OMP_NUM_THREADS`` (and the BLAS variables) for shell rules, but the pools
of libraries that are already loaded (numpy's BLAS, torch's intra-op and inter-op pools, numba's workers)
read those variables only once, at load time. :func:`limit_thread_pools` bounds all of them after load.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

#: environment variables read by OpenMP, the BLAS builds numpy/scipy/torch ship and numexpr. Not
#: NUMBA_NUM_THREADS: numba re-reads it and refuses a new value once its workers run (numba.set_num_threads
#: bounds them instead).
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GOTO_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def threads_from_environment(default: int | None = None) -> int | None:
    """The thread count Snakemake gave this job (``OMP_NUM_THREADS``), or ``default`` when unset/invalid.

    Parameters
    ----------
    default : int or None
        Returned when ``OMP_NUM_THREADS`` is unset or not a positive whole number.

    Returns
    -------
    int or None
        The positive thread count from ``OMP_NUM_THREADS``, else ``default``.
    """
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else default


def limit_thread_pools(n: int) -> dict[str, int]:
    """Bound every thread pool of this process to ``n`` threads; returns what each pool was set to.

    Sets the environment variables of :data:`THREAD_ENV` (for libraries loaded later and for child
    processes), the BLAS and OpenMP pools already loaded (``threadpoolctl.threadpool_limits``), torch's
    intra-op pool and, when it has not started yet, its inter-op pool (torch only when already imported),
    and numba's worker count (capped at the workers numba was started with).

    Parameters
    ----------
    n : int
        Threads per pool (>= 1; converted with ``int``).

    Returns
    -------
    dict of str to int
        Threads each pool has now: ``"<user_api>:<internal_api>"`` per threadpoolctl pool, ``"torch"`` (if
        torch is imported) and ``"numba"``.

    Raises
    ------
    ValueError
        If ``n`` < 1.
    """
    if int(n) < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    n = int(n)
    for var in THREAD_ENV:
        os.environ[var] = str(n)
    applied: dict[str, int] = {}
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(limits=n)
    for pool in threadpool_info():
        applied[f"{pool['user_api']}:{pool['internal_api']}"] = int(pool["num_threads"])
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # the inter-op pool has started; it is only used by torch.jit forks here
            pass
        applied["torch"] = torch.get_num_threads()
    import numba  # a dependency of the package (ARACNe kernels, scanpy)

    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    applied["numba"] = numba.get_num_threads()
    log.debug("thread pools bounded to %d: %s", n, applied)
    return applied
