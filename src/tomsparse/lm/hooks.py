"""PyTorch module hooks installed for the duration of a ``with`` block.

``hooked(hooks)`` registers every ``Hook`` in the given order and removes them all when the
block is left, by its end or by an exception (also when a registration itself fails part of
the way). Every place that hooks a model goes through it, so no hook outlives its use.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

KINDS = ("forward", "forward_pre")


@dataclass(frozen=True)
class Hook:
    """One hook: ``fn`` on ``module``, run after its forward (``kind="forward"``: ``fn(module,
    args, output)``) or before it (``"forward_pre"``: ``fn(module, args)``). With
    ``with_kwargs`` the module's keyword arguments are passed too: ``fn(module, args, kwargs,
    output)`` and ``fn(module, args, kwargs)``."""

    module: torch.nn.Module
    kind: str
    fn: Callable
    with_kwargs: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"hook kind {self.kind!r}: expected one of {', '.join(KINDS)}")

    def register(self):
        """Install the hook; returns PyTorch's removable handle."""
        if self.kind == "forward":
            return self.module.register_forward_hook(self.fn, with_kwargs=self.with_kwargs)
        return self.module.register_forward_pre_hook(self.fn, with_kwargs=self.with_kwargs)


@contextmanager
def hooked(hooks: Iterable[Hook]) -> Iterator[list]:
    """Install ``hooks`` (in order) for the duration; yields their handles. Every hook
    installed is removed on leaving, whatever the way out."""
    handles = []
    try:
        for hook in hooks:
            handles.append(hook.register())
        yield handles
    finally:
        for handle in handles:
            handle.remove()
