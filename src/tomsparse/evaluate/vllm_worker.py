"""Mixed into vLLM's workers (``LLM(worker_extension_cls=...)``, see
``evaluate.generate.VLLMGenerator``): the one method the HF side calls to push changed weights
into vLLM's own copy of the model.

The tensors travel through a safetensors file, not the RPC itself: vLLM's RPC decodes untyped
arguments without their types, so tensors sent as arguments arrive as nested lists (vLLM 0.32:
``'list' object has no attribute 'shard_id'``). This module imports nothing from vLLM, so the
worker can import it by name.
"""

from __future__ import annotations


class WeightPush:
    def tomsparse_reload(self, path: str) -> int:
        """Load the checkpoint-format tensors in ``path`` into the worker's model in place
        (vLLM's ``reload_weights``, which reruns each reloaded layer's weight processing:
        fusing q, k, v and gate, up, repacking for the CPU kernels). Returns their count."""
        from safetensors.torch import load_file

        tensors = load_file(path)
        self.reload_weights(weights_iterator=list(tensors.items()), is_checkpoint_format=True)
        return len(tensors)
