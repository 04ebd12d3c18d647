"""Resolve a --model argument (local path or Hugging Face hub name) to a local checkpoint path.

Hub downloads go through huggingface_hub, so they share the standard cache
(~/.cache/huggingface/hub, or $HF_HOME / $HF_HUB_CACHE) with transformers, show a progress
bar, and honour HF_HUB_OFFLINE=1. Only the files numpy_gpt2 reads are fetched.
"""

from __future__ import annotations

import os

from .errors import CheckpointError

# Short names of the published checkpoints -> their hub repositories.
HUB_ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
HUB_FILES = ["model.safetensors", "config.json", "vocab.json", "merges.txt"]


def resolve_model(model: str) -> str:
    """A local directory / .safetensors file is returned as is; a hub name ("gpt2",
    "distilgpt2", "owner/repo") is looked up in the Hugging Face cache and downloaded if
    needed. Returns a local path for numpy_gpt2.load. Raises CheckpointError (one line)
    when neither works."""
    model = os.fspath(model)
    if os.path.exists(model):
        return model
    repo = HUB_ALIASES.get(model, model)
    if model.startswith((".", "/", "~")) or model.endswith(".safetensors") or repo.count("/") > 1:
        raise CheckpointError(f"{model}: no such file or directory")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{model}: not a local path, and huggingface_hub (needed to download {repo}) is not "
            f"installed; pass a local directory holding model.safetensors") from None
    try:
        return snapshot_download(repo, allow_patterns=HUB_FILES)
    except Exception as online_error:  # network down, offline mode, unknown repo, ...
        try:  # a cached copy may still be complete
            return snapshot_download(repo, allow_patterns=HUB_FILES, local_files_only=True)
        except Exception:
            reason = str(online_error).strip().splitlines()[0] if str(online_error).strip() \
                else type(online_error).__name__
            raise CheckpointError(
                f"{model}: not a local path, and hub repo {repo} could not be downloaded or "
                f"found in the Hugging Face cache ({reason}); pass a local directory holding "
                f"model.safetensors (and config.json) with --model PATH") from None
