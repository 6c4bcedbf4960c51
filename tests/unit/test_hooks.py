"""``lm.hooks.hooked``: the hooks fire inside the ``with`` block and are gone after it, also
when an exception escapes it."""

from __future__ import annotations

import pytest
import torch

from tomsparse.lm.hooks import Hook, hooked


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def recording_hooks(model, calls):
    def forward(module, args, output):
        calls.append(("forward", module, args[0].shape, output.shape))

    def forward_kwargs(module, args, kwargs, output):
        calls.append(("forward_kwargs", module, dict(kwargs)))

    def pre(module, args):
        calls.append(("forward_pre", module, args[0].shape))

    def pre_kwargs(module, args, kwargs):
        calls.append(("forward_pre_kwargs", module, dict(kwargs)))

    return [Hook(model[0], "forward", forward),
            Hook(model[2], "forward", forward_kwargs, with_kwargs=True),
            Hook(model[0], "forward_pre", pre),
            Hook(model[2], "forward_pre", pre_kwargs, with_kwargs=True)]


def no_hooks_left(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks
               and not m._forward_hooks_with_kwargs and not m._forward_pre_hooks_with_kwargs
               for m in model.modules())


def test_hooks_fire_inside_and_are_gone_after():
    model, calls = net(), []
    x = torch.randn(5, 3)
    with hooked(recording_hooks(model, calls)) as handles:
        out = model(x)
        assert len(handles) == 4
    kinds = [c[0] for c in calls]
    assert sorted(kinds) == ["forward", "forward_kwargs", "forward_pre", "forward_pre_kwargs"]
    # The pre-hook runs before the forward hook of the same module.
    assert kinds.index("forward_pre") < kinds.index("forward")
    assert kinds.index("forward_pre_kwargs") < kinds.index("forward_kwargs")
    assert calls[kinds.index("forward")][2:] == (torch.Size([5, 3]), torch.Size([5, 4]))
    assert calls[kinds.index("forward_kwargs")][2] == {}
    assert no_hooks_left(model)
    calls.clear()
    assert torch.equal(model(x), out)
    assert calls == []


def test_hooks_removed_when_an_exception_escapes():
    model, calls = net(), []
    with pytest.raises(RuntimeError, match="inside"):
        with hooked(recording_hooks(model, calls)):
            model(torch.randn(2, 3))
            raise RuntimeError("inside")
    assert len(calls) == 4
    assert no_hooks_left(model)
    calls.clear()
    model(torch.randn(2, 3))
    assert calls == []


def test_hooks_removed_when_a_hook_raises():
    model = net()

    def boom(_module, _args, _output):
        raise ValueError("from the hook")

    with pytest.raises(ValueError, match="from the hook"):
        with hooked([Hook(model[0], "forward", boom)]):
            model(torch.randn(2, 3))
    assert no_hooks_left(model)


def test_registered_hooks_removed_when_registration_fails():
    model = net()

    def entries():
        yield Hook(model[0], "forward", lambda *a: None)
        yield Hook(model[2], "forward_pre", lambda *a: None)
        raise RuntimeError("no more hooks")

    with pytest.raises(RuntimeError, match="no more hooks"):
        with hooked(entries()):
            pass
    assert no_hooks_left(model)


def test_unknown_kind():
    with pytest.raises(ValueError, match="forward_pre"):
        Hook(net(), "backward", lambda *a: None)
