"""Figures and tables from the evaluation results: the paper's figures and Tables 1-2 (:mod:`.figures`, the
``figures`` stage) and GREmLN minus vanilla over pretraining seeds (:mod:`.ablation`, the ``ablation`` stage).
Imports lower layers only."""
