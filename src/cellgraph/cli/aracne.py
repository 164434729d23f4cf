"""``cellgraph aracne`` (temporary: re-exports the stage module's command-line functions)."""

from ..grn.aracne_io import configure_parser, run  # noqa: F401
