"""Perplexity, by the reference protocol (GPTQ / Wanda convention).

The corpus documents are joined with "\\n\\n", tokenized once, cut into non-overlapping
windows of ``seqlen`` tokens (the remainder is dropped) and perplexity = exp(mean window
loss). This is not lm-evaluation-harness's word perplexity; the two are not comparable.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from tomsparse.errors import UserError
from tomsparse.lm.batching import context_length, input_device


@dataclass
class PerplexityResult:
    perplexity: float
    mean_loss: float
    windows: int
    seqlen: int
    tokens: int
    corpus: str
    corpus_sha256: str
    max_tokens: int | None
    seconds: float
    protocol: str = ("documents joined with '\\n\\n', tokenized once, non-overlapping windows "
                     "of seqlen tokens (remainder dropped), ppl = exp(mean window loss)")

    def as_dict(self) -> dict:
        return asdict(self)


def tokenize_corpus(tokenizer, corpus, max_tokens: int | None = None) -> torch.Tensor:
    text = corpus.joined("\n\n")
    if max_tokens:
        # Tokenizing 1M tokens takes seconds; a capped run needs only a prefix. Characters
        # per token are well under 16 for natural text, so this prefix is always enough.
        text = text[: max_tokens * 16]
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if max_tokens:
        ids = ids[:max_tokens]
    return ids


@torch.inference_mode()
def perplexity(model, tokenizer, corpus, seqlen: int = 2048, max_tokens: int | None = None,
               batch_size: int = 4, token_ids: torch.Tensor | None = None,
               progress: bool = False) -> PerplexityResult:
    """Perplexity of ``model`` on ``corpus``; ``token_ids`` reuses an earlier tokenization."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    t0 = time.time()
    ctx = context_length(model)
    if ctx:
        seqlen = min(seqlen, ctx)
    if seqlen < 2:
        raise UserError(f"--seqlen {seqlen}: a perplexity window needs at least 2 tokens")
    ids = token_ids if token_ids is not None else tokenize_corpus(tokenizer, corpus, max_tokens)
    n_windows = ids.numel() // seqlen
    if n_windows == 0:
        raise UserError(f"corpus {corpus.name!r} has {ids.numel()} tokens"
                        f"{' after --max-tokens' if max_tokens else ''}, fewer than one window of "
                        f"{seqlen}; raise --max-tokens or lower --seqlen")
    windows = ids[: n_windows * seqlen].view(n_windows, seqlen)
    device = input_device(model)
    losses = []
    starts = range(0, n_windows, batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="perplexity", unit="batch")
    for start in starts:
        batch = windows[start:start + batch_size].to(device)
        logits = model(input_ids=batch).logits.float()
        # Mean next-token loss per window (seqlen - 1 predictions each).
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
            reduction="none").view(batch.shape[0], -1).mean(dim=1)
        losses.append(loss.cpu())
    mean_loss = float(torch.cat(losses).mean())
    if not math.isfinite(mean_loss):
        raise UserError(f"perplexity on {corpus.name!r} is not finite (mean loss {mean_loss}); "
                        "the model produces NaN/inf logits (try --dtype float32)")
    return PerplexityResult(perplexity=math.exp(mean_loss), mean_loss=mean_loss,
                            windows=n_windows, seqlen=seqlen, tokens=n_windows * seqlen,
                            corpus=corpus.name, corpus_sha256=corpus.sha256,
                            max_tokens=max_tokens, seconds=round(time.time() - t0, 2))
