"""``cellgraph train`` (temporary: re-exports the stage module's command-line functions)."""

from ..training.pretrain import configure_parser, run  # noqa: F401
