"""``cellgraph sources``: download one public source file with its pinned SHA-256, or extract a zip member.

With ``--url``: :func:`cellgraph.io.sources.fetch` downloads to ``--out`` and checks the file against
``--sha256`` (``null`` = not pinned yet: the download is hashed, deleted, and the error gives the digest to
pin). With ``--extract MEMBER --archive ZIP``: :func:`cellgraph.io.sources.extract_member` writes that member
to ``--out``. Either way the JSON record of the transfer goes to ``--report`` when given
(:func:`cellgraph.io.write_json`). What ``workflow/rules/sources.smk`` and ``datasets.smk`` call::

    cellgraph sources --name string_links_detailed_human --url URL --sha256 HEX \\
        --retries 3 --timeout 120 --out resources/downloads/string_links_detailed_human/FILE
"""

from __future__ import annotations

import argparse
import logging

from ..errors import InputError
from ..io import write_json
from ..io.sources import extract_member, fetch

log = logging.getLogger(__name__)


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the options of ``cellgraph sources`` to ``p``.

    Parameters
    ----------
    p : argparse.ArgumentParser
        The sub-command's parser; ``--name`` and ``--out`` are required, and either ``--url`` or
        ``--extract`` with ``--archive`` (checked by :func:`run`).
    """
    p.add_argument("--name", required=True, help="source key in config (for messages)")
    p.add_argument("--url", default=None)
    p.add_argument("--extract", default=None, metavar="MEMBER",
                   help="instead of downloading: extract MEMBER of the zip --archive to --out")
    p.add_argument("--archive", default=None, help="zip archive for --extract")
    p.add_argument("--sha256", default="null", help="expected SHA-256 digest; 'null' = not pinned yet")
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--out", required=True, help="destination file")
    p.add_argument("--report", default=None, help="optional JSON record of the download")


def run(args: argparse.Namespace) -> None:
    """``cellgraph sources``: one verified download or one zip member extraction (module docstring).

    Parameters
    ----------
    args : argparse.Namespace
        Options of :func:`configure_parser`; ``--sha256`` ``""``, ``null`` or ``None`` means not pinned.

    Raises
    ------
    InputError
        Neither ``--url`` nor ``--extract`` with ``--archive`` given; or, as
        :class:`cellgraph.io.sources.DownloadError`, a failed, truncated or mismatched download, an unpinned
        digest, or an archive that is not a zip or lacks the member (nothing is left at ``--out``).
    """
    sha = None if args.sha256 in ("", "null", "None") else args.sha256
    if args.extract:
        if not args.archive:
            raise InputError("--extract needs --archive")
        rec = extract_member(args.archive, args.extract, args.out)
    elif not args.url:
        raise InputError("--url is required (or --extract with --archive)")
    else:
        rec = fetch(args.name, args.url, sha, args.out, retries=args.retries, timeout=args.timeout)
    if args.report:
        write_json(args.report, rec)
    log.info("%s: %s (%d bytes)", args.name, rec["file"], rec["bytes"])
