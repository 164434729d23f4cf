"""``cellgraph figures`` (temporary: re-exports the stage module's command-line functions)."""

from ..pl.figures import configure_parser, run  # noqa: F401
