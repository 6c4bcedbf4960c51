"""Tiny randomly initialised causal LMs built in memory, for fast tests.

Each architecture is the real Hugging Face class with a very small config (two
layers, hidden size 32), so the adapter, score and evaluation code is exercised on
the same module structure as the full-size models, in milliseconds and with no
network.

``tiny_loaded_model`` wraps one as a ``LoadedModel`` and ``registered_model`` registers a
stand-in under a model name for the length of a ``with`` block, so a test can run the
command line (``--model tiny``) without monkeypatching the loader.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from tomsparse.lm.registry import (
    LoadedModel,
    register_model,
    resolve_dtype,
    unregister_model,
    wrap_model,
)

ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma3", "gpt2", "opt")

VOCAB = 128


def tiny_config(arch: str, **overrides):
    import transformers as T

    common = dict(vocab_size=VOCAB, max_position_embeddings=128)
    if arch == "llama":
        cfg = T.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2,
                            tie_word_embeddings=True, **common)
    elif arch == "qwen2":
        cfg = T.Qwen2Config(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, **common)
    elif arch == "mistral":
        cfg = T.MistralConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=1, **common)
    elif arch == "gemma3":
        cfg = T.Gemma3TextConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                 sliding_window=16, **common)
    elif arch == "gpt2":
        cfg = T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                           bos_token_id=0, eos_token_id=1,
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    elif arch == "opt":
        cfg = T.OPTConfig(hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
                          word_embed_proj_dim=32, dropout=0.0, attention_dropout=0.0,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1, **common)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose from {ARCHITECTURES}")
    if arch not in ("gpt2", "opt"):
        # RoPE reads prompts past the 128 positions (kept for small perplexity windows): the
        # builtin prompts (up to ~650 characters, one token each) are allowed, longer refused
        # (evaluate.tom.prompt_token_limit). gpt2 and opt have learned positions: 128 it is.
        cfg.max_prompt_tokens = 1024
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_model(arch: str, seed: int = 0, attn_implementation: str = "eager", **overrides):
    """A tiny randomly initialised causal LM of the given architecture, in eval mode, fp32."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(arch, **overrides)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation,
                                             dtype=torch.float32)
    model.eval()
    # Random init of HF norms/biases is often constant; give every parameter some spread so
    # that tests cannot pass by symmetry.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


class CharTokenizer:
    """A minimal tokenizer for tiny models: one id per character (mod the vocabulary).

    It implements the slice of the Hugging Face tokenizer API the project uses:
    ``__call__`` (text or list of texts, ``add_special_tokens``, ``padding``,
    ``return_tensors``), ``encode``, ``decode``, ``batch_decode``, ``pad_token_id``,
    ``eos_token_id``, ``bos_token_id`` and ``padding_side``.
    """

    def __init__(self, vocab_size: int = VOCAB, add_bos: bool = False):
        self.vocab_size = vocab_size
        self.bos_token_id = 0
        self.eos_token_id = 1
        self.pad_token_id = 1
        self.pad_token = "<pad>"
        self.eos_token = "<eos>"
        self.bos_token = "<bos>"
        self.padding_side = "right"
        self.add_bos = add_bos
        self.model_max_length = 128
        self.name_or_path = "char-tokenizer"

    def _ids(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # Printable ASCII maps to ids 2..96 (invertible); anything else becomes '?'.
        ids = [2 + (ord(c) - 32 if 32 <= ord(c) < 127 else ord("?") - 32) for c in text]
        if add_special_tokens and self.add_bos:
            ids = [self.bos_token_id] + ids
        return ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._ids(text, add_special_tokens)

    def __call__(self, text, add_special_tokens: bool = True, padding=False,
                 return_tensors=None, truncation=False, max_length=None, **_):
        single = isinstance(text, str)
        batch = [text] if single else list(text)
        ids = [self._ids(t, add_special_tokens) for t in batch]
        if truncation and max_length:
            ids = [x[-max_length:] for x in ids]
        masks = [[1] * len(x) for x in ids]
        if padding:
            width = max(len(x) for x in ids)
            for i, x in enumerate(ids):
                pad = width - len(x)
                if self.padding_side == "left":
                    ids[i] = [self.pad_token_id] * pad + x
                    masks[i] = [0] * pad + masks[i]
                else:
                    ids[i] = x + [self.pad_token_id] * pad
                    masks[i] = masks[i] + [0] * pad
        if return_tensors == "pt":
            return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(masks)}
        if single:
            return {"input_ids": ids[0], "attention_mask": masks[0]}
        return {"input_ids": ids, "attention_mask": masks}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if i in (0, 1):
                if not skip_special_tokens:
                    out.append("")
                continue
            out.append(chr(i - 2 + 32) if 2 <= i < 97 else "?")
        return "".join(out)

    def batch_decode(self, batch, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(x, skip_special_tokens) for x in batch]


def char_fast_tokenizer():
    """A real ``PreTrainedTokenizerFast`` with the ids of ``CharTokenizer`` (printable ASCII
    -> 2..96, <bos> 0, <eos>/<pad> 1), so a tiny model can be saved as an ordinary Hugging
    Face folder and loaded by another process."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<eos>": 1}
    vocab.update({chr(32 + i): 2 + i for i in range(95)})
    vocab["<unk>"] = 97
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<eos>", unk_token="<unk>", model_max_length=128)


def save_tiny_model(arch: str, folder, seed: int = 0):
    """Write a tiny model of ``arch`` and a character tokenizer as a Hugging Face folder
    (what ``tomsparse --model FOLDER`` loads in a subprocess)."""
    model = tiny_model(arch, seed=seed)
    model.save_pretrained(folder)
    char_fast_tokenizer().save_pretrained(folder)
    return folder


def tiny_loaded_model(arch: str = "llama", name: str = "tiny", dtype="float32", seed: int = 0,
                      tokenizer=None, **config_overrides) -> LoadedModel:
    """``tiny_model(arch)`` converted to ``dtype``, with a ``CharTokenizer`` (unless another
    tokenizer is given), described and fingerprinted like a model from ``load_model``."""
    model = tiny_model(arch, seed=seed, **config_overrides).to(resolve_dtype(dtype or "float32"))
    return wrap_model(model, tokenizer if tokenizer is not None else CharTokenizer(), name)


@contextmanager
def registered_model(name: str = "tiny", loader: Callable[..., LoadedModel] | None = None
                     ) -> Iterator[list[dict]]:
    """Within the block, ``load_model(name, ...)`` (and ``--model name``) returns
    ``loader(**keywords)``, with the keywords ``load_model`` passes (``device``, ``dtype``,
    ``device_map``, ...). The default loader is ``tiny_loaded_model(name=name, dtype=dtype)``.
    Yields the list of calls, each a dict of the name and those keywords; the name is
    unregistered on the way out, also when the block raises."""
    calls: list[dict] = []

    def default(dtype="float32", **_):
        return tiny_loaded_model(name=name, dtype=dtype)

    inner = loader if loader is not None else default

    def recording(**keywords):
        calls.append({"name": name, **keywords})
        return inner(**keywords)

    register_model(name, recording)
    try:
        yield calls
    finally:
        unregister_model(name)


def random_scores(lm: LoadedModel, seed: int = 0) -> tuple[dict, dict]:
    """(ToM, generic) score dicts of uniform random values, one tensor per target matrix."""
    gen = torch.Generator().manual_seed(seed)
    tom = {m.name: torch.rand(m.shape, generator=gen) for m in lm.description.matrices}
    generic = {m.name: torch.rand(m.shape, generator=gen) for m in lm.description.matrices}
    return tom, generic


def tiny_corpus(folder, paragraphs: int = 40) -> str:
    """A small plain-text perplexity corpus written into ``folder``; its path."""
    path = Path(folder) / "corpus.txt"
    path.write_text("\n\n".join(f"some generic text number {i} here" for i in range(paragraphs)))
    return str(path)
