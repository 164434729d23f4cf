"""Models of cellgraph: the GREmLN graph-diffusion transformer and its vanilla ablation."""

from .gremln import GREmLN, GREmLNConfig, PRESETS, load

__all__ = ["GREmLN", "GREmLNConfig", "PRESETS", "load"]
