"""``cellgraph perturb`` (temporary: re-exports the stage module's command-line functions)."""

from ..tl.perturb import configure_parser, run  # noqa: F401
