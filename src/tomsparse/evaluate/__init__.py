"""ToM evaluation and perplexity of a model as it is in memory.

``tom`` scores a TaskSet (likelihood, sampled or greedy generation) and is the entry point
(``evaluate``); ``generate`` holds the generation backends (Hugging Face ``generate``, vLLM);
``metrics`` the per-family / condition / scenario metrics with bootstrap intervals;
``results`` the result type, its CSVs and the one writer of the reference's
``tom/<rep>/<m>/<family>/results.csv`` layout; ``perplexity`` perplexity by the reference
protocol."""
