"""``cellgraph tokenize`` (temporary: re-exports the stage module's command-line functions)."""

from ..pp.tokenize import configure_parser, run  # noqa: F401
