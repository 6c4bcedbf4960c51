"""Massive activations: the few residual-stream channels whose values dwarf the rest
(Sun et al. 2024), found with one forward pass.

A channel's size is, for each block's output, its largest |h| over every real token divided by
that block's median |h|; a channel scores the largest such ratio over the blocks. The top
channels by score are the massive ones. On SmolLM2-135M three channels stand out by two orders
of magnitude, and 40% of the difference mask sits on them (issue 15): a mask variant can leave
them out (``masks.parse_mode``'s ``-x<n>``).
"""

from __future__ import annotations

import torch

from tomsparse.lm.batching import input_device, left_pad
from tomsparse.lm.hooks import Hook, hooked


@torch.no_grad()
def channel_scores(model, desc, token_ids: list[list[int]], pad_id: int,
                   batch_size: int = 8) -> torch.Tensor:
    """[hidden] score of each residual channel (see the module's docstring)."""
    hidden = desc.geometry.hidden_size
    peak = torch.zeros(desc.num_layers, hidden, dtype=torch.float64)
    medians: list[list[float]] = [[] for _ in range(desc.num_layers)]
    valid: torch.Tensor | None = None

    def hook_for(layer):
        def hook(_module, _inputs, output):
            h = output[0] if isinstance(output, (tuple, list)) else output
            mag = h.detach().float().abs()[valid.to(h.device)]  # [tokens, hidden]
            peak[layer] = torch.maximum(peak[layer], mag.max(dim=0).values.double().cpu())
            medians[layer].append(float(mag.median()))
        return hook

    device = input_device(model)
    with hooked(Hook(block, "forward", hook_for(i)) for i, block in enumerate(desc.blocks)):
        for start in range(0, len(token_ids), batch_size):
            ids, mask = left_pad(token_ids[start:start + batch_size], pad_id, device)
            valid = mask.bool()
            model(input_ids=ids, attention_mask=mask)
    # The median of batch medians: close enough to rank channels that differ by orders of
    # magnitude, and it needs no second pass.
    med = torch.tensor([float(torch.tensor(v).median()) if v else 1.0 for v in medians],
                       dtype=torch.float64).clamp_min(1e-12)
    return (peak / med[:, None]).max(dim=0).values


def massive_channels(model, desc, token_ids: list[list[int]], pad_id: int, n: int,
                     batch_size: int = 8) -> list[dict]:
    """The ``n`` channels with the largest score, most massive first: [{channel, score}]."""
    scores = channel_scores(model, desc, token_ids, pad_id, batch_size=batch_size)
    top = torch.topk(scores, min(n, scores.numel()))
    return [{"channel": int(c), "score": float(s)} for s, c in zip(top.values, top.indices)]
