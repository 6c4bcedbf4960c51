"""Perplexity in the GPTQ / Wanda convention, by one of two protocols.

Both join the corpus documents with "\\n\\n", tokenize the text once, cut it into
non-overlapping windows of ``seqlen`` tokens (the remainder is dropped) and report exp of a
mean next-token loss. They differ in three details:

* ``tomsparse`` (default): blank records dropped, no special tokens, ppl = exp(mean over
  windows of the window's mean loss), so the number does not depend on the batch size;
* ``reference``: the reference's protocol exactly: every record joined (WikiText-2's empty rows
  included), tokenized with the tokenizer's default special tokens (one BOS at the start for
  Llama tokenizers), batches of 2 windows, ppl = exp(mean over batches of the batch's mean
  token loss) (a last, single-window batch weighs as much as a full one).

Either is not lm-evaluation-harness's word perplexity; the two are not comparable.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch

from tomsparse.errors import UserError
from tomsparse.lm.batching import context_length, input_device
from tomsparse.lm.head import first_output, output_head, token_losses

PROTOCOLS = {
    "tomsparse": "documents (blank ones dropped) joined with '\\n\\n', tokenized once without "
                 "special tokens, non-overlapping windows of seqlen tokens (remainder dropped), "
                 "ppl = exp(mean window loss)",
    "reference": "every record (blank ones included) joined with '\\n\\n', tokenized once with "
                 "the tokenizer's default special tokens, non-overlapping windows of seqlen "
                 "tokens (remainder dropped), batches of 2 windows, ppl = exp(mean over batches "
                 "of the batch's mean token loss)",
}
# The reference evaluates two windows per forward pass, and its average is over those batches.
REFERENCE_BATCH = 2


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
    protocol: str = "tomsparse"
    protocol_text: str = PROTOCOLS["tomsparse"]
    # the mean token NLL of each window (tomsparse) or batch (reference), in order: the units
    # of the perplexity interval (stats.perplexity_ratio_interval)
    unit_losses: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown perplexity protocol {protocol!r}; use "
                        f"{' or '.join(PROTOCOLS)}")


def tokenize_corpus(tokenizer, corpus, max_tokens: int | None = None,
                    protocol: str = "tomsparse") -> torch.Tensor:
    """The corpus's token ids as ``protocol`` joins and tokenizes them."""
    _check_protocol(protocol)
    reference = protocol == "reference"
    text = corpus.joined("\n\n", blank_rows=reference)
    if max_tokens:
        # Tokenizing 1M tokens takes seconds; a capped run needs only a prefix. Characters
        # per token are well under 16 for natural text, so this prefix is always enough.
        text = text[: max_tokens * 16]
    ids = tokenizer(text, add_special_tokens=reference, return_tensors="pt")["input_ids"][0]
    if max_tokens:
        ids = ids[:max_tokens]
    return ids


def window_losses(model, batch: torch.Tensor, head=None) -> torch.Tensor:
    """Mean next-token loss (fp32) of each window of ``batch`` (seqlen - 1 predictions each).
    With ``head`` (``lm.head.output_head``) the output layer runs a chunk of positions at a
    time, so no (batch, seqlen, vocab) logits exist; otherwise the model's own logits are
    upcast one window at a time."""
    if head is not None:
        hidden = first_output(head.body(input_ids=batch, use_cache=False))[:, :-1]
        rows = hidden.reshape(-1, hidden.shape[-1])
        return token_losses(head, rows, batch[:, 1:].reshape(-1)).view(batch.shape[0], -1).mean(1)
    logits = first_output(model(input_ids=batch, use_cache=False))
    return torch.stack([torch.nn.functional.cross_entropy(
        logits[i, :-1].float(), batch[i, 1:].to(logits.device)) for i in range(batch.shape[0])])


@torch.inference_mode()
def perplexity(model, tokenizer, corpus, seqlen: int = 2048, max_tokens: int | None = None,
               batch_size: int | None = None, token_ids: torch.Tensor | None = None,
               progress: bool = False, protocol: str = "tomsparse") -> PerplexityResult:
    """Perplexity of ``model`` on ``corpus`` by ``protocol`` (see the module's docstring);
    ``token_ids`` reuses an earlier tokenization by the same protocol. ``batch_size`` is the
    windows per forward pass (default 4; the reference protocol's average depends on it, so
    it is 2 there and nothing else is accepted)."""
    _check_protocol(protocol)
    if protocol == "reference":
        if batch_size not in (None, REFERENCE_BATCH):
            raise UserError(f"batch size {batch_size}: the reference perplexity protocol averages "
                            f"over batches of {REFERENCE_BATCH} windows; leave --batch-size out")
        batch_size = REFERENCE_BATCH
    batch_size = 4 if batch_size is None else batch_size
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    t0 = time.time()
    ctx = context_length(model)
    if ctx:
        seqlen = min(seqlen, ctx)
    if seqlen < 2:
        raise UserError(f"--seqlen {seqlen}: a perplexity window needs at least 2 tokens")
    ids = (token_ids if token_ids is not None
           else tokenize_corpus(tokenizer, corpus, max_tokens, protocol))
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
    head = output_head(model)
    for start in starts:
        loss = window_losses(model, windows[start:start + batch_size].to(device), head)
        losses.append(loss.mean().reshape(1) if protocol == "reference" else loss)
    # tomsparse: the mean over windows; reference: the mean over batches of batch means.
    unit_losses = torch.cat(losses).float().cpu()
    mean_loss = float(unit_losses.mean())
    if not math.isfinite(mean_loss):
        raise UserError(f"perplexity on {corpus.name!r} is not finite (mean loss {mean_loss}); "
                        "the model produces NaN/inf logits (try --dtype float32)")
    return PerplexityResult(perplexity=math.exp(mean_loss), mean_loss=mean_loss,
                            windows=n_windows, seqlen=seqlen, tokens=n_windows * seqlen,
                            corpus=corpus.name,
                            corpus_sha256=(corpus.rows_sha256 if protocol == "reference"
                                           else corpus.sha256),
                            max_tokens=max_tokens, seconds=round(time.time() - t0, 2),
                            protocol=protocol, protocol_text=PROTOCOLS[protocol],
                            unit_losses=[float(x) for x in unit_losses])
