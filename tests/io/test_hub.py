"""numpy_gpt2.resolve_model: local paths, the Hugging Face cache, offline errors. No network.

huggingface_hub reads HF_HUB_OFFLINE / HF_HOME when it is imported, so the cache and offline
tests run resolve_model in a subprocess with those variables set (an empty or a hand-built
cache in a temporary directory) and a dead proxy, so that any request would fail at once.
Only the download call itself (which would need the network) is replaced by a fake, in-process.
"""

import json
import os
import subprocess
import sys

import huggingface_hub
import pytest

import numpy_gpt2
from helpers.checkpoints import make_config, write_checkpoint
from numpy_gpt2 import CheckpointError
from numpy_gpt2.io.hub import HUB_FILES
from helpers import REPO_ROOT

ROOT = REPO_ROOT
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def resolve_in_subprocess(model, hf_home):
    """(ok, path or error message) from resolve_model(model) with HF_HUB_OFFLINE=1, HF_HOME=hf_home."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(hf_home), PYTHONPATH=ROOT,
               HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    code = ("import json, sys, numpy_gpt2\n"
            "try: print(json.dumps([True, numpy_gpt2.resolve_model(sys.argv[1])]))\n"
            "except numpy_gpt2.CheckpointError as e: print(json.dumps([False, str(e)]))\n")
    proc = subprocess.run([sys.executable, "-c", code, model], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def fake_cached_repo(hf_home, repo, files):
    """The layout huggingface_hub (and transformers) leave in the cache after a download:
    hub/models--owner--name/{refs/main, snapshots/<commit>/<files>} (files as symlinks to blobs/)."""
    storage = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    snapshot = storage / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (storage / "blobs").mkdir()
    for name, source in files.items():
        blob = storage / "blobs" / f"blob-{name}"
        blob.write_bytes(source.read_bytes())
        os.symlink(blob, snapshot / name)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hubckpt")
    write_checkpoint(directory, make_config())
    return directory


def test_local_directory_and_file_are_returned_unchanged(ckpt):
    assert numpy_gpt2.resolve_model(ckpt) == str(ckpt)
    assert numpy_gpt2.resolve_model(str(ckpt / "model.safetensors")) == str(ckpt / "model.safetensors")


@pytest.mark.parametrize("model", ["./nope", "/no/such/dir", "nope.safetensors", "a/b/c", "~/no-such-ckpt"])
def test_missing_local_paths_are_not_sent_to_the_hub(model, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _must_not_be_called)
    with pytest.raises(CheckpointError, match="no such file or directory"):
        numpy_gpt2.resolve_model(model)


@pytest.mark.parametrize("model, message", [
    ("", "'': an empty model name; expected a checkpoint directory or weights file, or a hub name"),
    ("  ", "'  ': an empty model name"),
    ("/dev/null", "/dev/null: not a checkpoint: neither a directory nor a regular file"),
    ("{fifo}", "{fifo}: not a checkpoint: neither a directory nor a regular file"),
])
def test_empty_names_and_special_files_are_refused_where_they_enter(model, message, tmp_path, monkeypatch):
    """Not sent to the hub, and not reported as missing: they exist, but hold no checkpoint."""
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _must_not_be_called)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError) as error:
        numpy_gpt2.resolve_model(model.format(fifo=fifo))
    assert str(error.value).startswith(message.format(fifo=fifo))


def _must_not_be_called(*args, **kwargs):
    raise AssertionError("snapshot_download was called")


@pytest.mark.parametrize("model, repo", [("gpt2", "openai-community/gpt2"),
                                         ("distilgpt2", "distilbert/distilgpt2"),
                                         ("someone/gpt2-finetuned", "someone/gpt2-finetuned")])
def test_offline_without_a_cached_copy_is_a_one_line_error(tmp_path, model, repo):
    ok, message = resolve_in_subprocess(model, tmp_path / "empty-hf-home")
    assert not ok
    assert "\n" not in message
    assert f"tried Hugging Face hub repo {repo}" in message
    assert str(tmp_path / "empty-hf-home" / "hub") in message  # which cache was looked in
    assert "HF_HUB_OFFLINE=1" in message and "model=PATH" in message


def test_offline_a_cached_snapshot_is_reused(ckpt, tmp_path):
    files = {name: ckpt / name for name in ("model.safetensors", "config.json")}
    snapshot = fake_cached_repo(tmp_path, "openai-community/gpt2", files)
    ok, path = resolve_in_subprocess("gpt2", tmp_path)
    assert ok and path == str(snapshot)
    params, config = numpy_gpt2.load(path)
    assert config.n_layer == 2 and params["wte"]["weight"].shape == (97, 32)


def test_offline_owner_repo_names_use_the_cache_too(ckpt, tmp_path):
    snapshot = fake_cached_repo(tmp_path, "someone/tiny-gpt2", {"model.safetensors": ckpt / "model.safetensors"})
    assert resolve_in_subprocess("someone/tiny-gpt2", tmp_path) == [True, str(snapshot)]


def test_a_cached_copy_without_safetensors_weights_is_named(ckpt, tmp_path):
    # e.g. a transformers download of an old repo: pytorch_model.bin only
    fake_cached_repo(tmp_path, "distilbert/distilgpt2", {"config.json": ckpt / "config.json"})
    ok, message = resolve_in_subprocess("distilgpt2", tmp_path)
    assert not ok
    assert "copy of hub repo distilbert/distilgpt2" in message and "has no model.safetensors" in message
    assert "pytorch_model.bin" in message


def test_a_cached_copy_with_pytorch_model_bin_only_loads(tmp_path):
    """Old hub repos have only pytorch_model.bin: resolved from the cache, read without torch."""
    import torch
    from helpers.format_files import hf_model, small
    config, sd = small()
    src = tmp_path / "src"
    src.mkdir()
    torch.save(hf_model(config, sd).state_dict(), src / "pytorch_model.bin",
               _use_new_zipfile_serialization=False)
    config.save_pretrained(src)
    snapshot = fake_cached_repo(tmp_path / "home", "someone/old-gpt2",
                                {n: src / n for n in ("pytorch_model.bin", "config.json")})
    assert resolve_in_subprocess("someone/old-gpt2", tmp_path / "home") == [True, str(snapshot)]
    params, cfg = numpy_gpt2.load(snapshot)
    assert params["wte"]["weight"].shape == (97, 32)


def test_download_asks_for_exactly_the_four_files(ckpt, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(ckpt)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert numpy_gpt2.resolve_model("gpt2-xl") == str(ckpt)
    assert calls == [("openai-community/gpt2-xl", {"allow_patterns": HUB_FILES})]
    assert sorted(HUB_FILES) == ["config.json", "merges.txt", "model.safetensors", "vocab.json"]


def test_online_failure_is_said_in_words_with_how_to_work_offline(monkeypatch):
    def unreachable(repo_id, **kwargs):
        raise ConnectionError("Could not reach huggingface.co\nretry details...")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(CheckpointError) as info:
        numpy_gpt2.resolve_model("gpt2-medium")
    message = str(info.value)
    assert "\n" not in message
    assert "openai-community/gpt2-medium" in message
    assert "the hub could not be reached" in message and "retry" not in message
    # Words, not the library's exception names; and how to work offline.
    assert "Error" not in message and "ConnectionError" not in message
    assert "HF_HUB_OFFLINE=1" in message and "model=PATH" in message
