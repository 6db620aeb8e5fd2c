"""Click-through-like data and models for sparse training (issue 20): the ``ctr_synthetic``
source with a planted model, and the ``ctr_mlp`` model whose tables are `tidal.nn` layers."""
