"""Small I/O helpers shared by the stages: atomic outputs, JSON reports, checked inputs."""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    The temporary file keeps the suffix of ``path`` (so writers that look at it, such as
    ``AnnData.write_h5ad`` or ``numpy.savez``, behave) and is removed if the block raises, so a failed
    run never leaves a partial output.

    Parameters
    ----------
    path : str or os.PathLike
        Final output file; its parent folders are created. Stale temporaries of ``path`` left by dead
        writers of this host are removed first.

    Yields
    ------
    pathlib.Path
        Temporary file ``.<name>.<host>-<pid>.<random><suffix>`` in the folder of ``path`` (already
        created, empty, permissions 0666 less the umask), to be written by the block.

    Raises
    ------
    BaseException
        Whatever the block raises is re-raised unchanged, after the temporary is deleted (``path`` is
        left as it was).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    # the writer's host and process id in the name: a temporary left by a killed writer (SIGKILL, node
    # failure: no cleanup runs) is removed by the next write of the same output on the same host
    owner = f"{socket.gethostname()}-{os.getpid()}"
    _remove_stale_temporaries(path, suffix)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner}.", suffix=suffix, dir=path.parent)
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


def _remove_stale_temporaries(path: Path, suffix: str) -> None:
    """Delete ``.<name>.<host>-<pid>.<random><suffix>`` temporaries of ``path`` whose writer, a process of this
    host, is gone. Those of other hosts, of live processes (or a reused pid) and foreign names are kept."""
    host = socket.gethostname()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.{glob.escape(host)}-*{glob.escape(suffix)}"):
        pid = tmp.name[len(f".{path.name}.{host}-"):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # no such process: its write was interrupted
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        except PermissionError:  # alive, another user's
            pass


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.json`` file (written through :func:`atomic_path`).
    obj : Any
        JSON-serialisable object; numpy integers, floats and arrays and ``pathlib.Path`` are converted
        (an other type raises ``TypeError``, not JSON serialisable).
    """
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


def read_h5ad(path: str | os.PathLike, what: str | None = None, backed: str | None = None):
    """``anndata.read_h5ad(path, backed=backed)``; any read failure becomes one :class:`InputError`
    ``"<what or path>: cannot be read as h5ad (<error type>: <message>)"`` (a truncated or foreign file is the
    user's input, not a traceback).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.h5ad`` file.
    what : str, optional
        Name of the input in the error message (default: ``path``).
    backed : str, optional
        ``None`` loads into memory; ``"r"`` (or ``"r+"``) opens it backed on disk, as ``anndata``.

    Returns
    -------
    anndata.AnnData
        The object ``anndata.read_h5ad`` returns.

    Raises
    ------
    InputError
        Any exception while reading (missing, truncated or foreign file), chained to the original.
    """
    import anndata as ad

    try:
        return ad.read_h5ad(path, backed=backed)
    except Exception as err:  # noqa: BLE001 - any read failure is the user's file
        raise InputError(f"{what or path}: cannot be read as h5ad ({type(err).__name__}: {err})") from err


def require_file(path: str | os.PathLike, what: str) -> Path:
    """Return ``Path(path)`` or raise :class:`InputError` naming ``what`` if it is not a readable file.

    Parameters
    ----------
    path : str or os.PathLike
        Input file to check.
    what : str
        Name of the input in the error message (a config key or a command line option).

    Returns
    -------
    pathlib.Path
        ``Path(path)``.

    Raises
    ------
    InputError
        ``"<what>: file not found: <path>"`` when ``path`` is not an existing regular file.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what}: file not found: {p}")
    return p


def write_tsv(df, path: str | os.PathLike, float_format: str = "%.6g") -> None:
    """Write a DataFrame as a tab-separated table without its index, atomically (:func:`atomic_path`).

    Parameters
    ----------
    df : pandas.DataFrame
        Table to write; its columns, with a header line, not its index.
    path : str or os.PathLike
        Output ``.tsv`` file.
    float_format : str
        ``printf`` format of float cells (default ``"%.6g"``, six significant digits).
    """
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format=float_format)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
    """Write arrays as an uncompressed ``.npz`` (what ``numpy.savez`` writes, read by ``numpy.load``),
    atomically and byte-reproducibly: ``numpy.savez`` stamps the current time into each zip entry, here every
    entry has a fixed date, so the same arrays give the same bytes.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.npz`` file.
    arrays : Mapping[str, array-like]
        Entry name -> array (stored as ``<name>.npy``); object arrays are refused (``allow_pickle=False``
        raises ``ValueError``).
    """
    import zipfile

    import numpy as np

    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED,
                                                   allowZip64=True) as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def save_figure(fig, path: str | os.PathLike, dpi: int = 120, **savefig_kwargs: Any) -> None:
    """Save a matplotlib figure as PNG at ``path`` and as vector PDF beside it (``path`` with suffix ``.pdf``,
    for papers), each atomically, then close it.

    Neither file carries a software tag or creation date, so reruns give the same bytes. ``dpi`` applies to
    the PNG (and to rasterised artists of the PDF).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        Figure to save; it is closed afterwards.
    path : str or os.PathLike
        PNG output; the PDF goes to ``path`` with suffix ``.pdf``.
    dpi : int
        Resolution of the PNG in dots per inch (default 120).
    **savefig_kwargs
        Passed on to ``Figure.savefig`` for both files (for example ``bbox_inches="tight"``).
    """
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None}, **savefig_kwargs)
    with atomic_path(Path(path).with_suffix(".pdf")) as tmp:
        fig.savefig(tmp, format="pdf", dpi=dpi, metadata={"Creator": None, "Producer": None, "CreationDate": None},
                    **savefig_kwargs)
    plt.close(fig)
