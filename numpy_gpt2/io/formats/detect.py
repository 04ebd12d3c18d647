"""Find the weights a `source` path names and read where every tensor is, whatever the format.

A directory is searched for, in this order: model.safetensors,
model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json, ckpt.pt
(nanoGPT), then a TensorFlow checkpoint (OpenAI's release: the prefix its `checkpoint` file
names, else model.ckpt; see openai_tf). A P.index, P.data-*-of-* or P.meta file, or the
prefix P of one, is TensorFlow's too. Any other file's format comes from its first bytes,
not its name (except *.index.json):
  "PK\\x03\\x04"               zip: torch.save (torch >= 1.6): pytorch_model.bin or nanoGPT ckpt.pt
  a pickle of 0x1950a86a20f9469cfc6c  legacy torch.save (torch < 1.6)
  int32 20240326              llm.c model file
  "ustar" at byte 257         tar: torch.save before 0.4 -- refused
  anything else               safetensors (its parser says when it is not; a *.bin, *.pt,
                              *.pth or *.ckpt file not starting like one is refused as unknown)
"""

from __future__ import annotations

import dataclasses
import os

from numpy_gpt2.config import GPT2Config
from numpy_gpt2.errors import CheckpointError
from numpy_gpt2.io.formats.llmc import is_llmc, llmc_tensors
from numpy_gpt2.io.formats.nanogpt import is_nanogpt, nanogpt_tensors
from numpy_gpt2.io.formats.openai_tf import index_of, openai_tf_tensors
from numpy_gpt2.io.formats.safetensors import safetensors_tensors
from numpy_gpt2.io.formats.shards import sharded_tensors
from numpy_gpt2.io.formats.torch_bin import is_legacy_torch, read_torch, state_dict_tensors

DIRECTORY_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json", "ckpt.pt")


@dataclasses.dataclass
class Found:
    """weights: the file (or index) errors name; tensors: {name in the file: Stored};
    config: the format's own config (nanoGPT, llm.c), or None: read config_path (the
    config.json beside the weights, None when there is none) or infer it."""
    weights: str
    tensors: dict
    config: GPT2Config | None
    config_path: str | None
    format: str


def find_checkpoint(source) -> Found:
    """source: a directory or a weights file (any format above) -> Found. Raises CheckpointError."""
    source = os.fspath(source)
    found = [n for n in DIRECTORY_FILES if os.path.isfile(os.path.join(source, n))] \
        if os.path.isdir(source) else []
    tf_index = index_of(source) if not found else None
    if tf_index is not None:
        tensors, config = openai_tf_tensors(tf_index)
        return Found(tf_index, tensors, config, None, "TensorFlow")
    if os.path.isdir(source):
        if not found:
            raise CheckpointError(f"{source}: directory has no model.safetensors (nor "
                                  f"{', '.join(DIRECTORY_FILES[1:])}, model.ckpt.index)")
        weights = os.path.join(source, found[0])
    elif os.path.isfile(source):
        weights = source
    else:
        raise CheckpointError(f"{source}: no such file or directory")
    config_path = os.path.join(os.path.dirname(weights) or ".", "config.json")
    config_path = config_path if os.path.isfile(config_path) else None
    if weights.endswith(".index.json"):
        return Found(weights, sharded_tensors(weights, _shard_tensors), None, config_path,
                     "sharded")
    kind, tensors, config = file_tensors(weights)
    head, wte = tensors.get("lm_head.weight"), tensors.get("transformer.wte.weight", tensors.get("wte.weight"))
    if head is not None and head == wte:
        del tensors["lm_head.weight"]  # tied in torch: the same bytes, nothing to check or copy
    return Found(weights, tensors, config, None if config else config_path, kind)


def _shard_tensors(path: str) -> dict:
    kind, tensors, config = file_tensors(path)
    if config is not None:
        raise CheckpointError(f"{path}: a {kind} file cannot be a shard")
    return tensors


def file_tensors(path: str) -> tuple[str, dict, GPT2Config | None]:
    """(format name, {name: Stored}, the file's own config or None) of one weights file."""
    try:
        with open(path, "rb") as f:
            head = f.read(262)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if head[257:262] == b"ustar":
        raise CheckpointError(f"{path}: a tar archive (torch.save before torch 0.4) is not "
                              f"supported; re-save it with a recent torch")
    if is_llmc(head):
        return ("llm.c", *llmc_tensors(path))
    if head[:4] == b"PK\x03\x04" or is_legacy_torch(head):
        obj = read_torch(path)
        if is_nanogpt(obj):
            model = state_dict_tensors(obj["model"], path, "the nanoGPT checkpoint's model")
            return ("nanoGPT", *nanogpt_tensors(model, obj["model_args"], path))
        return "torch", state_dict_tensors(obj, path), None
    if path.endswith((".bin", ".pt", ".pth", ".ckpt")) and not _maybe_safetensors(head):
        raise CheckpointError(f"{path}: not a torch.save file (zip or pickle), an llm.c model "
                              f"file (magic 20240326) nor safetensors (first bytes {head[:8]!r})")
    return "safetensors", safetensors_tensors(path), None


def _maybe_safetensors(head: bytes) -> bool:
    """An 8-byte header length, then a JSON object."""
    return len(head) > 8 and head[8:9] == b"{"
