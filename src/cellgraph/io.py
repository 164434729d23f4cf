"""Small I/O helpers shared by the stages: atomic outputs, JSON reports, checked inputs."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    The temporary file keeps the suffix of ``path`` (so writers that look at it, such as
    ``AnnData.write_h5ad`` or ``numpy.savez``, behave) and is removed if the block raises, so a failed
    run never leaves a partial output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def require_file(path: str | os.PathLike, what: str) -> Path:
    """Return ``Path(path)`` or raise :class:`InputError` naming ``what`` if it is not a readable file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what}: file not found: {p}")
    return p


def write_tsv(df, path: str | os.PathLike, float_format: str = "%.6g") -> None:
    """Write a DataFrame as a tab-separated table without its index, atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format=float_format)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120, **savefig_kwargs: Any) -> None:
    """Save a matplotlib figure as PNG atomically (no software tag, so reruns give the same bytes) and close
    it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None}, **savefig_kwargs)
    plt.close(fig)
