"""The model layer: everything the later stages need to know about a causal LM.

``registry`` loads a model by name (code-registered loaders, the packaged offline models,
local folders, hub ids) into a ``LoadedModel``; ``gguf`` converts the packaged GGUF files to a
cached Hugging Face folder; ``adapter`` describes any loaded model by its structure (blocks,
target matrices and their roles, attention geometry, RoPE); ``batching`` holds the helpers
every stage that feeds the model shares (input device, pad id, left padding, length-sorted
batches, context length, progress bars); ``hooks`` installs module hooks for a ``with``
block only."""
