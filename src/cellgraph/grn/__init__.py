"""Gene regulatory networks: the ARACNe engine (:mod:`.aracne`), per-cell-type networks with their permutation
control (:mod:`.celltypes`, the ``grn`` stage) and standalone ARACNe with ARACNe-AP/ARACNe3 file formats
(:mod:`.aracne_io`, the ``aracne`` stage). Imports only lower layers (io, graphs)."""
