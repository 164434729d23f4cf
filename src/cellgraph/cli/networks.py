"""``cellgraph networks`` (temporary: re-exports the stage module's command-line functions)."""

from ..graphs.networks import configure_parser, run  # noqa: F401
