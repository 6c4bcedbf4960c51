"""The vLLM backend's weight sync, against a stand-in engine (no vllm needed): which
parameters it sends after a perturbation and its restore. The real engine is tested in
tests/vllm (``make test-vllm``)."""

import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from tomsparse.evaluate.generate import VLLMGenerator, block_of, parameter_states
from tomsparse.lm import adapter
from tomsparse.perturb import perturbed
from tomsparse.testing import tiny_model


class RecordingEngine:
    """Records what a VLLMGenerator sends it, as vLLM's LLM would receive it."""

    def __init__(self):
        self.reloads: list[dict] = []
        self.prefix_resets = 0

    def collective_rpc(self, method, args=(), kwargs=None):
        # what each worker's vllm_worker.WeightPush.tomsparse_reload reads
        assert method == "tomsparse_reload" and kwargs is None
        self.reloads.append(load_file(args[0]))

    def reset_prefix_cache(self):
        self.prefix_resets += 1


def mirrored(model) -> VLLMGenerator:
    gen = object.__new__(VLLMGenerator)  # the engine-free part: no vllm
    gen.model, gen.llm, gen.tensors_sent = model, RecordingEngine(), 0
    gen._dir = tempfile.TemporaryDirectory(prefix="tomsparse-test-vllm-")
    gen._synced = parameter_states(model)
    return gen


def test_block_names():
    assert block_of("model.layers.12.self_attn.q_proj.weight") == "model.layers.12"
    assert block_of("transformer.h.0.attn.c_attn.bias") == "transformer.h.0"
    assert block_of("model.embed_tokens.weight") == "model.embed_tokens.weight"


def test_sends_the_perturbed_blocks_whole_then_the_restored_ones():
    model = tiny_model("llama")
    desc = adapter.describe(model)
    gen = mirrored(model)
    assert gen.sync_weights() == 0 and gen.llm.reloads == []
    target = next(m for m in desc.matrices if m.layer == 1 and m.role == "q")
    with perturbed(desc.matrices, {target.name: torch.arange(0, target.numel, 5)}, mode="zero"):
        sent = gen.sync_weights()
        perturbed_q = target.module.weight.detach().clone()
    block = {n for n, _ in model.named_parameters() if n.startswith("model.layers.1.")}
    first = gen.llm.reloads[0]
    assert set(first) == block and sent == len(block)  # k, v, o, mlp, norms ride along
    q_name = next(n for n, p in model.named_parameters() if p is target.module.weight)
    assert torch.equal(first[q_name], perturbed_q)
    assert (first[q_name] == 0).sum() >= target.numel // 5
    gen.sync_weights()  # after the restore: the same block again, with the original values
    assert set(gen.llm.reloads[1]) == block
    assert torch.equal(gen.llm.reloads[1][q_name], target.module.weight)
    assert not torch.equal(gen.llm.reloads[1][q_name], perturbed_q)
    assert gen.sync_weights() == 0 and len(gen.llm.reloads) == 2
    assert gen.llm.prefix_resets == 2  # stale KV blocks dropped after each reload
    assert not any(Path(gen._dir.name).iterdir())  # each push file removed once read


def test_force_sends_every_parameter():
    model = tiny_model("llama")
    gen = mirrored(model)
    assert gen.sync_weights(force=True) == len(list(model.named_parameters()))
