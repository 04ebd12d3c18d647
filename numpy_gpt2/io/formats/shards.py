"""Sharded checkpoints: model.safetensors.index.json or pytorch_model.bin.index.json.

transformers' save_pretrained splits a checkpoint larger than max_shard_size (5 GB by
default) into shards (model-00001-of-00003.safetensors, ...) and writes an index,
{"metadata": {"total_size": bytes}, "weight_map": {tensor name: shard file name}}, beside
them. Each shard is read and checked as a single file would be; the index and the shards
must agree exactly (every name in the shard the index names, no name anywhere else).
"""

from __future__ import annotations

import json
import os

from numpy_gpt2.checks import cut, show
from numpy_gpt2.errors import CheckpointError


def read_index(path: str) -> dict[str, str]:
    """The weight_map of an index file, checked: {name: shard file name in the same directory}."""
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: not valid JSON") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path}: expected a JSON object with a non-empty \"weight_map\" "
                              f"{{tensor name: shard file}}")
    for name, shard in weight_map.items():
        if not name.isprintable() or len(name) > 1000:  # messages print it
            raise CheckpointError(f"{path}: weight_map has a corrupted tensor name {show(name)}")
        if not isinstance(shard, str) or not shard.isprintable() or os.path.basename(shard) != shard \
                or shard in ("", ".", ".."):
            raise CheckpointError(f"{path}: weight_map[{cut(repr(name))}] is {show(shard)}, expected "
                                  f"a file name in the index's directory")
    return weight_map


def sharded_tensors(path: str, read_shard) -> dict:
    """{name: Stored} over all shards of the index at `path`. read_shard(shard path) ->
    {name: Stored} reads one shard (safetensors or torch). Raises CheckpointError naming a
    missing shard, a name the index maps to a shard that lacks it, or a name a shard holds
    that the index does not map to it."""
    weight_map = read_index(path)
    directory = os.path.dirname(path) or "."
    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(name)
    for shard, names in by_shard.items():
        if not os.path.isfile(os.path.join(directory, shard)):
            more = f" and {len(names) - 1} more" if len(names) > 1 else ""
            raise CheckpointError(f"{path}: shard {shard} is missing (it holds {names[0]}{more})")
    out = {}
    for shard, names in by_shard.items():
        shard_path = os.path.join(directory, shard)
        tensors = read_shard(shard_path)
        lacking = [n for n in names if n not in tensors]
        if lacking:
            raise CheckpointError(f"{shard_path}: inconsistent shard: lacks {lacking[0]}, which "
                                  f"{os.path.basename(path)} maps to it")
        for name, t in tensors.items():
            if weight_map.get(name) != shard:
                elsewhere = (f"maps it to {weight_map[name]}" if name in weight_map
                             else "does not list it")
                raise CheckpointError(f"{shard_path}: inconsistent shard: holds {name}, but "
                                      f"{os.path.basename(path)} {elsewhere}")
            out[name] = t
    return out
