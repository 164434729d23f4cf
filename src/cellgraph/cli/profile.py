"""``cellgraph install-profile``: make ``snakemake --profile slurm`` work.

Snakemake finds a profile given by name only in the user's and the system's Snakemake config folders
(``$XDG_CONFIG_HOME/snakemake/<name>``, default ``~/.config/snakemake/<name>``, and ``/etc/xdg/snakemake``),
never in the repository's ``profiles/`` folder. This command copies a profile folder of the repository
(default ``profiles/slurm``) there. Existing files are left alone unless ``--force``; identical copies are
not an error, so the command can be rerun.
"""

from __future__ import annotations

import argparse
import filecmp
import logging
import os
import shutil
from pathlib import Path

from ..errors import InputError

log = logging.getLogger(__name__)

__all__ = ["snakemake_config_dir", "install_profile", "default_profile_source", "configure_parser", "run"]

REPO = Path(__file__).resolve().parents[3]


def snakemake_config_dir() -> Path:
    """The user's Snakemake config folder: ``$XDG_CONFIG_HOME/snakemake`` or ``~/.config/snakemake``.

    Returns
    -------
    Path
        The folder (not created; it may not exist).
    """
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "snakemake"


def install_profile(source: str | Path, name: str, force: bool = False, config_dir: str | Path | None = None
                    ) -> Path:
    """Copy the profile folder ``source`` (with its ``config.yaml``) to ``<config_dir>/<name>``.

    Each file is copied to a temporary name and then renamed into place; ``__pycache__`` is skipped.

    Parameters
    ----------
    source : str or Path
        The profile folder to copy (holds ``config.yaml``).
    name : str
        The profile name, a plain folder name (as in ``snakemake --profile NAME``).
    force : bool
        Overwrite destination files that differ from the source.
    config_dir : str or Path or None
        The Snakemake config folder (default :func:`snakemake_config_dir`).

    Returns
    -------
    Path
        The destination folder ``<config_dir>/<name>``.

    Raises
    ------
    InputError
        ``source`` has no ``config.yaml``, ``name`` is not a plain folder name, or the destination holds
        different files and ``force`` is False; nothing is written in these cases.
    """
    src = Path(source)
    if not (src / "config.yaml").is_file():
        raise InputError(f"{src}: not a Snakemake profile folder (expected {src / 'config.yaml'})")
    if not name or "/" in name or name in (".", ".."):
        raise InputError(f"--name must be a plain folder name, got {name!r}")
    dest = Path(config_dir) if config_dir else snakemake_config_dir()
    dest = dest / name
    files = sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    clashes = [dest / f.relative_to(src) for f in files
               if (dest / f.relative_to(src)).exists()
               and not filecmp.cmp(f, dest / f.relative_to(src), shallow=False)]
    if clashes and not force:
        raise InputError(f"{clashes[0]}: exists and differs from {src / clashes[0].relative_to(dest)}; "
                         "rerun with --force to overwrite")
    for f in files:
        target = dest / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(f, tmp)
        os.replace(tmp, target)
    return dest


def default_profile_source(cwd: str | Path | None = None) -> Path:
    """The repository's ``profiles/slurm``: next to the package in an editable install (``src/cellgraph``), else
    under ``cwd`` (default: the current folder, e.g. a clone of the repository).

    Parameters
    ----------
    cwd : str or Path or None
        The folder searched second (default the current folder).

    Returns
    -------
    Path
        The first of ``<repository>/profiles/slurm`` and ``<cwd>/profiles/slurm`` that holds ``config.yaml``.

    Raises
    ------
    InputError
        If neither holds ``profiles/slurm/config.yaml`` (a non-editable install run outside a clone): the
        message names both places and asks for ``--source``.
    """
    candidates = [REPO / "profiles" / "slurm", Path(cwd or Path.cwd()) / "profiles" / "slurm"]
    for c in candidates:
        if (c / "config.yaml").is_file():
            return c
    raise InputError(f"--source: no profiles/slurm/config.yaml in {candidates[0]} (next to the installed package) "
                     f"or in {candidates[1]} (the current folder); run from a clone of the repository or pass "
                     "--source <clone>/profiles/slurm")


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``install-profile`` stage's command-line options to ``p``."""
    p.add_argument("--source", default=None,
                   help="profile folder to install (default: profiles/slurm of the repository this package was "
                        "installed from in editable mode, or of the current folder)")
    p.add_argument("--name", default="slurm", help="profile name, as in `snakemake --profile NAME` (default slurm)")
    p.add_argument("--config-dir", default=None,
                   help="Snakemake config folder (default $XDG_CONFIG_HOME/snakemake or ~/.config/snakemake)")
    p.add_argument("--force", action="store_true", help="overwrite files that differ")


def run(args: argparse.Namespace) -> None:
    """``cellgraph install-profile``: copy ``--source`` to ``<config-dir>/<name>`` (:func:`install_profile`).

    Reads the profile folder ``--source`` (default the repository's ``profiles/slurm``) and writes its files to
    ``--config-dir/--name`` (default ``~/.config/snakemake/slurm``), then prints the next steps.

    Raises
    ------
    InputError
        If ``--source`` has no ``config.yaml``, ``--name`` is not a plain folder name, or a destination file
        differs and ``--force`` is not given.
    """
    dest = install_profile(args.source or default_profile_source(), args.name, args.force, args.config_dir)
    print(f"installed profile {args.name!r} in {dest}\n"
          f"set slurm_partition / slurm_account in {dest / 'config.yaml'}, then run:\n"
          f"  snakemake --profile {args.name} --configfile config/paper.yaml")
