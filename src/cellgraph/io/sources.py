"""Download public network releases with pinned checksums (pooch).

Every file of ``config["sources"]["files"]`` is fetched by :func:`fetch`, which delegates the transfer to
`pooch <https://www.fatiando.org/pooch>`_ (Uieda et al., *JOSS* 2020): streaming into a temporary file in
the destination folder, SHA-256 verification, rename into place only when the digest matches (atomic
write), and ``retries`` further attempts with a linear back-off of 1, 2, ... 10 s after a connection
error, an HTTP error status, a truncated body or a digest mismatch. After the last failed attempt nothing
is left at the destination and :class:`DownloadError` names the source, the URL and, for a mismatch, the
expected and the found digest.

A file whose ``sha256`` is ``null`` in config is downloaded once, hashed and deleted; the error gives the
digest to pin (trust is never implicit).

Command line (``cellgraph sources``, :mod:`cellgraph.cli.sources`; what ``workflow/rules/sources.smk`` calls)::

    cellgraph sources --name string_links_detailed_human --url URL --sha256 HEX \
        --retries 3 --timeout 120 --out resources/downloads/string_links_detailed_human/FILE
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path

from ..errors import InputError

log = logging.getLogger(__name__)

__all__ = ["DownloadError", "fetch", "sha256_of", "extract_member"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(InputError):
    """A download failed: unreachable server, HTTP error, truncated body or checksum mismatch."""


def sha256_of(path: str | Path) -> str:
    """SHA-256 hex digest (64 lower-case hex characters) of a file.

    Parameters
    ----------
    path : str or pathlib.Path
        File to hash (read in chunks by ``pooch.file_hash``).

    Returns
    -------
    str
        The digest, 64 lower-case hexadecimal characters.
    """
    import pooch

    return pooch.file_hash(str(path), alg="sha256")


def fetch(
    name: str,
    url: str,
    sha256: str | None,
    dest: str | Path,
    *,
    retries: int = 3,
    timeout: float = 120.0,
) -> dict:
    """Download ``url`` to ``dest`` and verify its SHA-256 digest.

    Parameters
    ----------
    name : the source's key in config (for messages), for example ``biogrid``.
    url : http(s) URL of the release file.
    sha256 : expected digest, 64 hex characters; ``None`` downloads once, hashes, deletes and fails with
        the digest to pin.
    dest : destination file. An existing file with the right digest is kept without any transfer; one
        with a wrong digest is downloaded again.
    retries : further attempts after the first (pooch ``retry_if_failed``), with 1, 2, ... 10 s waits.
    timeout : seconds without data before an attempt fails.

    Returns
    -------
    dict with ``name, url, file, sha256, bytes, seconds, action`` (``download`` or ``cached``).

    Raises
    ------
    DownloadError
        Malformed ``sha256``; connection failure, HTTP error status or truncated transfer after all
        attempts (message names the source, URL and last error); digest mismatch (names the source,
        the expected and the found digest). No file is left at ``dest`` in either case.
    """
    import pooch
    import requests

    dest = Path(dest)
    if sha256 is not None:
        sha256 = str(sha256).strip().lower()
        if not _HEX64.match(sha256):
            raise DownloadError(f"source {name}: sha256 {sha256!r} is not 64 hexadecimal characters")
    if retries < 0:
        raise DownloadError(f"source {name}: retries must be >= 0, got {retries}")
    cached = dest.is_file() and sha256 is not None and sha256_of(dest) == sha256
    registry = {dest.name: f"sha256:{sha256}" if sha256 else None}
    store = pooch.create(
        path=dest.parent, base_url="", registry=registry, urls={dest.name: url}, retry_if_failed=retries,
    )
    downloader = pooch.HTTPDownloader(timeout=timeout, progressbar=False)
    t0 = time.perf_counter()
    try:
        store.fetch(dest.name, downloader=downloader)
    except ValueError as err:
        found = re.search(r"but got ([0-9a-fA-F]+)", str(err))
        raise DownloadError(
            f"source {name}: checksum mismatch for {url}: expected sha256 {sha256}, found "
            f"{found.group(1) if found else '(unknown)'} after {retries + 1} attempt(s); the download was deleted"
        ) from err
    except requests.exceptions.RequestException as err:
        raise DownloadError(
            f"source {name}: download of {url} failed after {retries + 1} attempt(s): {err}"
        ) from err
    found = sha256_of(dest)
    if sha256 is None:
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        raise DownloadError(
            f"source {name}: no sha256 pinned in config for {url}; the downloaded file has sha256 {found}. "
            "Check the release and pin that digest (sources.files.<name>.sha256); the download was deleted"
        )
    return {
        "name": name, "url": url, "file": str(dest), "sha256": found, "bytes": dest.stat().st_size,
        "seconds": round(time.perf_counter() - t0, 3), "action": "cached" if cached else "download",
    }


def extract_member(archive: str | Path, member: str, dest: str | Path) -> dict:
    """Extract one file of a zip archive (a BioGRID release) to ``dest``, atomically.

    Parameters
    ----------
    archive : str or pathlib.Path
        The zip file.
    member : str
        Name of the member inside the archive, as ``ZipFile.namelist`` gives it.
    dest : str or pathlib.Path
        Output file (written through :func:`cellgraph.io.atomic_path`).

    Returns
    -------
    dict
        ``archive``, ``member``, ``file`` (``dest``) and ``bytes`` (size of the extracted file).

    Raises
    ------
    DownloadError
        The archive is not a readable zip file, or has no member named ``member`` (the message lists a
        few of its members).
    """
    import shutil
    import zipfile

    from . import atomic_path

    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            if member not in names:
                raise DownloadError(f"archive {archive}: no member {member!r}; it has {len(names)} members, "
                                    f"for example {names[:5]}")
            with zf.open(member) as src, atomic_path(dest) as tmp, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, length=1 << 22)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"archive {archive}: not a zip file ({err})") from err
    return {"archive": str(archive), "member": member, "file": str(dest), "bytes": Path(dest).stat().st_size}
