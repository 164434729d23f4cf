"""``cellgraph diffusion`` (temporary: re-exports the stage module's command-line functions)."""

from ..tl.diffusion import configure_parser, run  # noqa: F401
