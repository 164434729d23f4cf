"""``cellgraph ablation`` (temporary: re-exports the stage module's command-line functions)."""

from ..pl.ablation import configure_parser, run  # noqa: F401
