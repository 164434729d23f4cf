"""``cellgraph transfer`` (temporary: re-exports the stage module's command-line functions)."""

from ..tl.transfer import configure_parser, run  # noqa: F401
