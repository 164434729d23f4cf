"""Training loops: masked-token pretraining of GREmLN and the vanilla transformer with Lightning
(:mod:`.pretrain`, the ``train`` stage). Imports lower layers only (io, graphs, grn, pp, models)."""
