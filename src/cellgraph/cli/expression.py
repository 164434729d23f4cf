"""``cellgraph expression`` (temporary: re-exports the stage module's command-line functions)."""

from ..pp.expression import configure_parser, run  # noqa: F401
