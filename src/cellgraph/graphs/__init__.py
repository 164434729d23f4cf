"""Gene graphs: network parsers and id maps (:mod:`.networks`), the nine-graph multigraph (:mod:`.multigraph`),
normalized Laplacians and Chebyshev heat kernels (:mod:`.spectral`), and fixed gene features from the graphs
(:mod:`.gene_features`). Imports only :mod:`cellgraph.io` and :mod:`cellgraph.errors`."""
