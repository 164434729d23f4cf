"""cellgraph: graph-aware models of the cell."""

__version__ = "0.1.0"
