"""``cellgraph evaluate`` (temporary: re-exports the stage module's command-line functions)."""

from ..tl.evaluate import configure_parser, run  # noqa: F401
