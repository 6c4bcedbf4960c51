"""What every point of a sweep shares and is computed once per sweep: the perplexity tokens
(reported, and the held-apart ones the damage-matched searches use) and the massive-activation
channels that ``-x`` masks leave out (cached in the sweep folder)."""

from __future__ import annotations

from pathlib import Path

from tomsparse.config import SweepConfig
from tomsparse.evaluate.perplexity import tokenize_corpus
from tomsparse.lm.activations import massive_channels
from tomsparse.lm.batching import context_length, pad_token_id
from tomsparse.files import read_json_object, write_json


def perplexity_splits(lm, corpus, cfg: SweepConfig, log=print):
    """(reported token ids, held-apart search token ids): the first ``ppl_max_tokens`` of the
    corpus are reported, up to ``match_search_tokens`` after them are only searched on. When
    the whole corpus is reported (``ppl_max_tokens`` None), its last quarter at most is held
    apart instead. Too little text for one window apart (or 0, or no matched controls): the
    searches use the reported tokens, and the log and ``matched.json`` say so."""
    search = cfg.match_search_tokens if cfg.matched_controls else 0
    wanted = None if cfg.ppl_max_tokens is None else cfg.ppl_max_tokens + search
    ids = tokenize_corpus(lm.tokenizer, corpus, wanted, cfg.ppl_protocol)
    if not search:
        return ids, ids
    window = min(cfg.ppl_seqlen, context_length(lm.model) or cfg.ppl_seqlen)
    if cfg.ppl_max_tokens is None:
        apart = min(search, ids.numel() // 4)
        report, held = ids[:ids.numel() - apart], ids[ids.numel() - apart:]
    else:
        report, held = ids[:cfg.ppl_max_tokens], ids[cfg.ppl_max_tokens:wanted]
    if held.numel() < window:
        log(f"[tomsparse] perplexity corpus {corpus.name!r}: {held.numel()} tokens left to hold "
            f"apart for the matched searches, less than one window of {window}; the searches "
            "use the reported tokens")
        return report, report
    return report, held


def cached_massive_channels(lm, ppl_ids, path: Path, n: int, log=print) -> list[int]:
    """The ``n`` massive-activation channels, found once per sweep folder (a forward pass over
    8 windows of the perplexity tokens) and kept in ``path`` beside the points."""
    if path.exists():
        found = read_json_object(path)["channels"]
        if len(found) >= n:
            return [c["channel"] for c in found][:n]
    ids = ppl_ids.tolist()
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    windows = [([bos] if bos is not None else []) + ids[i:i + 255]
               for i in range(0, min(len(ids), 8 * 255), 255)]
    found = massive_channels(lm.model, lm.description, windows,
                             pad_token_id(lm.tokenizer), n)
    write_json(path, {"channels": found, "windows": len(windows), "tokens_per_window": 256,
                      "how": "largest |h| of a channel over tokens / the block's median "
                             "|h|, maximum over blocks (lm.activations)"})
    log("[tomsparse] massive-activation channels left out by -x masks: "
        + ", ".join(f"{c['channel']} ({c['score']:.0f}x median)" for c in found))
    return [c["channel"] for c in found]
