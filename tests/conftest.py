"""Test configuration: tests never touch the network."""

import os

# Set before transformers / datasets / huggingface_hub are imported anywhere.
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def default_model():
    """The real packaged default model (converted once into the user's cache)."""
    from tomsparse.lm.registry import load_model

    return load_model("smollm2-135m", device="cpu", log=lambda *_: None)
