"""Experiments (tools): evaluation with baselines (:mod:`.evaluate`, :mod:`.transfer`), perturbation prediction
(:mod:`.perturb`, :mod:`.perturb_forward`, :mod:`.perturb_yeast`, :mod:`.perturb_eval`), latent diffusion
(:mod:`.diffusion`) and its scVI baseline (:mod:`.scvi_baseline`). Imports every lower layer, never
:mod:`cellgraph.pl` or :mod:`cellgraph.cli`."""
