"""``cellgraph spectral`` (temporary: re-exports the stage module's command-line functions)."""

from ..graphs.spectral import configure_parser, run  # noqa: F401
