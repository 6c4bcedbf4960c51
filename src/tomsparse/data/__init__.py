"""The data the pipeline reads: ``corpora`` (generic text for the scores and text for
perplexity: the packaged offline Wikipedia split, C4, WikiText-2, local files), ``tasks`` (the
ToM task model, the reference-format loaders, the built-in bank and ToMi) and
``score_samples`` (the tokenized, supervised samples the sensitivity scores are computed on,
drawn as the reference code draws them)."""
