"""Preprocessing of cells: count QC, normalisation and splits (:mod:`.expression`), the pretraining corpus
(:mod:`.corpus`) and rank tokens with cell subgraphs (:mod:`.tokenize`). Imports only lower layers (io, graphs)."""
