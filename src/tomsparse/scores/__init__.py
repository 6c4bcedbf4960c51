"""Sensitivity scores: S = sum over samples of the squared per-sample weight gradient.

``compute`` is the entry point (``compute_score_set``, the result type, the per-sample
definition); ``losses`` the per-sample losses and the fused output head; ``methods`` the loop
and batched implementations with their accumulators; ``distributed`` the data-parallel
plumbing under torchrun; ``store`` the score store on disk; ``reference_chunks`` the
reference's chunk folders, imported into a store and exported from one."""
