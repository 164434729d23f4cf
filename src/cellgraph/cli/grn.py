"""``cellgraph grn`` (temporary: re-exports the stage module's command-line functions)."""

from ..grn.celltypes import configure_parser, run  # noqa: F401
