"""``cellgraph multigraph`` (temporary: re-exports the stage module's command-line functions)."""

from ..graphs.multigraph import configure_parser, run  # noqa: F401
