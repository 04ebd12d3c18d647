"""Resolve a model argument (local path or Hugging Face hub name) to a local checkpoint path.

Hub downloads go through huggingface_hub, so they share the standard cache
(~/.cache/huggingface/hub, or $HF_HUB_CACHE, or $HF_HOME/hub) with transformers: a model
downloaded once, by either, is reused. Only the four files numpy_gpt2 reads are fetched, with
huggingface_hub's progress bar. HF_HUB_OFFLINE=1 never touches the network and uses the cache.
"""

from __future__ import annotations

import os

from numpy_gpt2.errors import CheckpointError

# Short names of the published checkpoints -> their hub repositories.
HUB_ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
HUB_FILES = ["model.safetensors", "config.json", "vocab.json", "merges.txt"]
# Tried in turn when a repo has no model.safetensors (older or bigger repos), each with the
# three small files: what numpy_gpt2.load reads in a directory after model.safetensors.
OTHER_WEIGHTS = [("model.safetensors.index.json", "model-*.safetensors"),
                 ("pytorch_model.bin",),
                 ("pytorch_model.bin.index.json", "pytorch_model-*.bin")]


def _looks_like_path(model: str) -> bool:
    # Hub names are "name" or "owner/name"; anything else can only have meant a file.
    return (model.startswith((".", "/", "~")) or model.endswith(".safetensors")
            or "\\" in model or model.count("/") > 1)


def _why_not_downloaded(error: Exception, offline: bool) -> str:
    """snapshot_download's failure in words (not the library's exception names)."""
    from huggingface_hub import errors

    if offline:
        return "not in the cache, and HF_HUB_OFFLINE=1 forbids downloading"
    if isinstance(error, errors.GatedRepoError):  # a RepositoryNotFoundError too: first
        return "the repo is gated: accept its terms on huggingface.co and log in"
    if isinstance(error, (errors.RepositoryNotFoundError, errors.RevisionNotFoundError)):
        return "no such repo on the hub (or it is private: log in with `hf auth login`)"
    if isinstance(error, errors.HFValidationError):
        return "not a valid hub repo name (owner/name)"
    return "not in the cache, and the hub could not be reached (no network?)"


def resolve_model(model) -> str:
    """A local directory or .safetensors file -> that path, unchanged. A hub name ("gpt2",
    "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2", or "owner/repo") -> the local snapshot
    directory in the Hugging Face cache, downloading model.safetensors, config.json, vocab.json
    and merges.txt first if they are not cached (a local path of the same name wins).

    Raises CheckpointError, with a one-line message saying what was tried, when the path does
    not exist, or the repo is neither cached nor downloadable (no network, HF_HUB_OFFLINE=1,
    unknown repo), or the cached/downloaded copy has no weights numpy_gpt2 reads. A repo
    without model.safetensors is tried for sharded safetensors, then pytorch_model.bin, then
    sharded .bin (OTHER_WEIGHTS), each a download of its own.
    """
    model = os.path.expanduser(os.fspath(model))
    if not model.strip():
        raise CheckpointError(f"{model!r}: an empty model name; expected a checkpoint directory "
                              f"or weights file, or a hub name such as gpt2")
    if os.path.exists(model):
        if not (os.path.isdir(model) or os.path.isfile(model)):  # /dev/null, a FIFO, a socket
            raise CheckpointError(f"{model}: not a checkpoint: neither a directory nor a "
                                  f"regular file")
        return model
    if _looks_like_path(model):
        raise CheckpointError(f"{model}: no such file or directory")
    repo = HUB_ALIASES.get(model, model)
    how_to = ("pass a local checkpoint instead: model=PATH, a directory holding "
              "model.safetensors and config.json (or the .safetensors file itself)")
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        raise CheckpointError(f"{model}: not a local path, and huggingface_hub (needed to fetch "
                              f"hub repo {repo}) is not installed; {how_to}") from None
    try:
        # Offline (HF_HUB_OFFLINE=1) or with the hub unreachable, this returns the cached
        # snapshot when there is one.
        path = snapshot_download(repo, allow_patterns=HUB_FILES)
    except Exception as e:  # network down, offline mode, unknown repo, bad repo name, ...
        raise CheckpointError(
            f"{model}: not a local path; tried Hugging Face hub repo {repo} (cache "
            f"{constants.HF_HUB_CACHE}): {_why_not_downloaded(e, constants.HF_HUB_OFFLINE)}; "
            f"to work offline, {how_to}, or download {repo} once while online: then "
            f"HF_HUB_OFFLINE=1 uses that cached copy without the network") from None
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return path
    for patterns in OTHER_WEIGHTS:
        try:
            path = snapshot_download(repo, allow_patterns=[*patterns, *HUB_FILES[1:]])
        except Exception:  # offline without these files cached, or the hub unreachable now
            continue
        if os.path.isfile(os.path.join(path, patterns[0])):
            return path
    raise CheckpointError(
        f"{model}: the copy of hub repo {repo} at {path} has no model.safetensors (nor "
        f"{', '.join(p[0] for p in OTHER_WEIGHTS)}); {how_to}")
