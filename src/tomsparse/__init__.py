"""tomsparse: sparse Theory-of-Mind parameter patterns in causal language models.

Pipeline: scores -> masks -> perturbation -> evaluation -> report, with the model
adapter (``adapter``) and the data sources (``models``, ``corpora``, ``tasks``) beside it.
"""

__version__ = "0.1.0"
