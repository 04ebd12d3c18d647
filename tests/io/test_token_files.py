"""Token files (nanoGPT's headerless uint16, llm.c's 256-int32 header) and scripts/prepare.py."""

from __future__ import annotations

import json
import os
import re
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_gpt2
from helpers import REPO_ROOT
from numpy_gpt2.io import token_files
from numpy_gpt2.training import data

from helpers.run_scripts import load_script, run_script


def llmc_shard(path, tokens, version=1, count=None):
    """A shard as llm.c's dev/data/data_common.py write_datafile lays it out."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = 20240520, version, len(tokens) if count is None else count
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype="<u2").tobytes())


@settings(max_examples=10)
@given(tokens=st.lists(st.integers(0, 50256), min_size=1, max_size=300))
def test_both_formats_read_back_the_same_tokens(tmp_path_factory, tokens):
    d = tmp_path_factory.mktemp("tok")
    np.asarray(tokens, dtype="<u2").tofile(d / "nano.bin")  # nanoGPT: arr.tofile of uint16
    llmc_shard(d / "llmc.bin", tokens)
    for name in ("nano.bin", "llmc.bin"):
        m = token_files.open_tokens(d / name)
        assert isinstance(m, np.memmap) and m.dtype == np.uint16 and m.tolist() == tokens
        assert token_files.max_token(m, chunk=7) == max(tokens)


def test_token_file_errors(tmp_path):
    (tmp_path / "odd.bin").write_bytes(b"abc")
    (tmp_path / "empty.bin").write_bytes(b"")
    llmc_shard(tmp_path / "v2.bin", [1, 2], version=2)
    llmc_shard(tmp_path / "short.bin", [1, 2, 3], count=5)
    for name, message in [("missing.bin", "missing.bin: cannot read"),
                          ("odd.bin", "odd.bin: 3 bytes, an odd count"),
                          ("empty.bin", "holds no tokens"),
                          ("v2.bin", "version 2, expected 1"),
                          ("short.bin", "header says 5 tokens .* but the file has 1030 bytes")]:
        with pytest.raises(ValueError, match=message):
            token_files.open_tokens(tmp_path / name)
    with pytest.raises(ValueError, match="no train.bin"):
        token_files.open_token_dir(tmp_path)


def test_load_data_reads_a_token_directory_and_batches_from_it(tmp_path):
    rng = np.random.default_rng(0)
    train, val = rng.integers(0, 50257, 500), rng.integers(0, 50257, 100)
    train.astype("<u2").tofile(tmp_path / "train.bin")
    llmc_shard(tmp_path / "val.bin", val)  # the two formats may even be mixed
    splits = data.load_data(str(tmp_path), tokenizer=None)
    assert splits["train"].tolist() == train.tolist() and splits["val"].tolist() == val.tolist()
    x, y = data.get_batch(splits["train"], 16, 4, np.random.default_rng(1))
    ref_x, ref_y = data.get_batch(train, 16, 4, np.random.default_rng(1))  # the in-memory array
    assert x.dtype == np.int64 and np.array_equal(x, ref_x) and np.array_equal(y, ref_y)


# ----------------------------------------------------------------------------------------
# scripts/prepare.py

def documents(ids):
    """Token ids split after each 50256 (every document ends with one)."""
    ids = list(ids)
    assert not ids or ids[-1] == 50256
    out, cur = [], []
    for t in ids:
        if t == 50256:
            out.append(cur)
            cur = []
        else:
            cur.append(t)
    return out


def test_prepare_writes_nanogpt_files_split_by_document(tmp_path, tokenizer_dir, capsys, monkeypatch):
    monkeypatch.setenv("NUMPY_GPT2_TOKENIZER", tokenizer_dir)
    enc = numpy_gpt2.load_tokenizer(tokenizer_dir)
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    texts = [f"  Document {i}:\n\nsome text, not stripped {'é' * i}  \n" for i in range(40)]
    (corpus / "a.txt").write_text("<|endoftext|>".join(texts[:30]) + "<|endoftext|>", encoding="utf-8")
    for i in range(30, 40):
        (corpus / "sub" / f"{i}.txt").write_text(texts[i], encoding="utf-8")
    (corpus / ".hidden").write_text("never read", encoding="utf-8")
    status, out, err = run_script("prepare", [corpus, "--out", tmp_path / "out", "--val-fraction",
                                              "0.25", "--workers", "3"], capsys)
    assert status == 0, err
    train = token_files.open_tokens(tmp_path / "out" / "train.bin")
    val = token_files.open_tokens(tmp_path / "out" / "val.bin")
    # The headerless uint16 layout nanoGPT's train.py reads with np.memmap(dtype=np.uint16).
    assert os.path.getsize(tmp_path / "out" / "train.bin") == 2 * len(train)
    expected = [enc.encode_ordinary(t) for t in texts]
    got_train, got_val = documents(train), documents(val)
    assert sorted(got_train + got_val) == sorted(expected)  # every document once, whole
    assert got_train == [d for d in expected if d in got_train]  # input order kept
    assert 0 < len(got_val) < 40
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["train"] == {"tokens": len(train), "documents": len(got_train)}
    assert meta["val"] == {"tokens": len(val), "documents": len(got_val)}
    # The same seed gives the same files; another seed another split.
    status, _, _ = run_script("prepare", [corpus, "--out", tmp_path / "again", "--val-fraction", "0.25",
                                          "--workers", "1"], capsys)
    assert status == 0
    assert (tmp_path / "again" / "val.bin").read_bytes() == (tmp_path / "out" / "val.bin").read_bytes()
    status, _, _ = run_script("prepare", [corpus, "--out", tmp_path / "other", "--val-fraction", "0.25",
                                          "--seed", "1"], capsys)
    assert (tmp_path / "other" / "val.bin").read_bytes() != (tmp_path / "out" / "val.bin").read_bytes()


def test_prepare_long_document_in_pieces_equals_whole(tmp_path, tokenizer_dir, capsys, monkeypatch):
    """A document longer than PIECE_CHARS is tokenized in pieces; its tokens are unchanged."""
    monkeypatch.setenv("NUMPY_GPT2_TOKENIZER", tokenizer_dir)
    enc = numpy_gpt2.load_tokenizer(tokenizer_dir)
    path = os.path.join(os.environ.get("NUMPY_GPT2_DATA", ""), "tinyshakespeare.txt")
    if not os.path.isfile(path):
        pytest.skip("NUMPY_GPT2_DATA is not set to a directory holding tinyshakespeare.txt")
    text = open(path, encoding="utf-8").read()[:200_000]
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    (tmp_path / "b.txt").write_text("x", encoding="utf-8")
    prepare = load_script("prepare")
    monkeypatch.setattr(prepare, "PIECE_CHARS", 5000)
    monkeypatch.setattr(prepare, "READ_BYTES", 4096)
    pieces = list(prepare.pieces([str(tmp_path / "a.txt")], lambda n: None))
    assert len(pieces) > 20 and "".join(p for p, _ in pieces) == text
    assert prepare.main([str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--out", str(tmp_path / "o"),
                         "--val-fraction", "0.5", "--seed", "0"]) == 0  # seed 0: one document each
    both = documents(token_files.open_tokens(tmp_path / "o" / "train.bin")) + \
        documents(token_files.open_tokens(tmp_path / "o" / "val.bin"))
    assert sorted(both) == sorted([enc.encode_ordinary(text), [87]])


@settings(max_examples=20)
@given(parts=st.lists(st.sampled_from(["a", "Ab", " ", "  ", "\n", "\n\n", "x\n", "'s", "é", "1",
                                       "!", "\t", " \n", "z"]), max_size=40))
def test_safe_cuts_do_not_change_tokens(tokenizer_dir, parts):
    enc = numpy_gpt2.load_tokenizer(tokenizer_dir)
    prepare = load_script("prepare")
    text = "".join(parts)
    cuts = [0] + [m.start() for m in prepare.SAFE_CUT.finditer(text)] + [len(text)]
    pieces = [enc.encode_ordinary(text[a:b]) for a, b in zip(cuts, cuts[1:])]
    assert sum(pieces, []) == enc.encode_ordinary(text)


def test_prepare_bad_input_exits_2_with_one_line(tmp_path, tokenizer_dir, capsys, monkeypatch):
    monkeypatch.setenv("NUMPY_GPT2_TOKENIZER", tokenizer_dir)
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "one.txt").write_text("only one document", encoding="utf-8")
    far = (1 << 20) + 5  # beyond prepare's first read: the offset counts from the file's start
    (tmp_path / "far.txt").write_bytes(b"a" * far + "é".encode("latin-1"))
    for argv, message in [
            ([tmp_path / "far.txt", "--out", tmp_path / "o"],
             rf"far.txt: not UTF-8 text \([a-z ]+: byte 0xe9 at offset {far}\)"),
            ([tmp_path / "nope", "--out", tmp_path / "o"], "nope: no such file or directory"),
            ([tmp_path / "latin1.txt", "--out", tmp_path / "o"], r"latin1.txt: not UTF-8 text \([a-z ]+: byte 0xe9 at offset 3\)"),
            ([tmp_path / "one.txt", "--out", tmp_path / "o", "--val-fraction", "0.99"], "too short to cut"),
            ([tmp_path / "one.txt", "--out", tmp_path / "o", "--val-fraction", "1"], "--val-fraction 1.0"),
            ([tmp_path / "one.txt"], "required: --out")]:
        status, out, err = run_script("prepare", argv, capsys)
        lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and "prepare:" not in line]
        assert status == 2 and len(lines) == 1 and re.search(message, lines[0]), err  # the rest: progress bar
    assert not (tmp_path / "o").exists()  # nothing left: no file, no temporary, no new directory


# ----------------------------------------------------------------------------------------
# scripts/train.py --data DIR

TINY = ["--n-layer", 1, "--n-head", 2, "--n-embd", 16, "--block-size", 16, "--batch-size", 2,
        "--eval-iters", 1, "--seed", 3, "--max-iters", 3, "--eval-interval", 2]


def test_train_from_token_dir_equals_train_from_the_text(tmp_path, tokenizer_dir, capsys, monkeypatch):
    """The text file's two splits written as token files train exactly the same weights."""
    monkeypatch.setenv("NUMPY_GPT2_TOKENIZER", tokenizer_dir)
    text = "Hello there.<|endoftext|>General Kenobi! You are a bold one.\n" * 40
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    splits = data.load_splits(tmp_path / "t.txt", numpy_gpt2.load_tokenizer(tokenizer_dir))
    (tmp_path / "tok").mkdir()
    for name, tokens in splits.items():
        tokens.astype("<u2").tofile(tmp_path / "tok" / f"{name}.bin")
    for data_arg, out in [(tmp_path / "t.txt", "a"), (tmp_path / "tok", "b")]:
        status, _, err = run_script("train", ["--data", data_arg, "--out", tmp_path / out, *TINY], capsys)
        assert status == 0, err
    a, _ = numpy_gpt2.load(tmp_path / "a")
    b, _ = numpy_gpt2.load(tmp_path / "b")
    for key, value in numpy_gpt2.flatten_params(a).items():
        np.testing.assert_array_equal(value, numpy_gpt2.flatten_params(b)[key], err_msg=key)
    # Resuming checks the token files are the ones trained on.
    with open(tmp_path / "tok" / "val.bin", "r+b") as f:
        f.write(np.array([1], "<u2").tobytes())
    status, _, err = run_script("train", ["--resume", tmp_path / "b", "--data", tmp_path / "tok",
                                          "--max-iters", 4], capsys)
    assert status == 2 and "not the file the run" in err
    np.array([50300] * 40, "<u2").tofile(tmp_path / "tok" / "val.bin")
    status, _, err = run_script("train", ["--data", tmp_path / "tok", "--out", tmp_path / "c", *TINY], capsys)
    assert status == 2 and "the val split's token ids reach 50300, beyond the model's vocab_size=50257" in err


def peak_memory(argv, env, budget):
    """Run argv with RLIMIT_DATA = budget bytes (the process's private memory: heap and
    anonymous maps; a read-only file map is not counted); return (exit status, peak RssAnon
    MB, peak RssFile MB), polled from /proc every 10 ms."""
    import resource
    import subprocess
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_DATA, (budget, budget))

    p = subprocess.Popen([sys.executable, *map(str, argv)], env=env, preexec_fn=limit,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = {"RssAnon": 0, "RssFile": 0}
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    key = line.split(":")[0]
                    if key in peak:
                        peak[key] = max(peak[key], int(line.split()[1]) // 1024)
        except OSError:  # exited between poll and open
            pass
        time.sleep(0.01)
    assert p.returncode == 0, p.stderr.read().decode()
    return peak["RssAnon"], peak["RssFile"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads RssAnon from /proc (Linux)")
def test_memory_stays_flat_over_a_token_file_larger_than_the_budget(tmp_path, tokenizer_dir):
    """train.py over a 512 MB train.bin with a 400 MB memory budget (the run's own data
    segment peaks at about 215 MB over a 1 MB file, more when a third thread maps its OpenBLAS
    buffer; 256 MB was hit once): the startup scan (vocab
    check) reads every page of the map, yet the process's own memory (RssAnon) is what it is
    over a 1 MB file; only the map's file pages (RssFile) grow."""
    mb = 1 << 20
    for name, n_tokens in [("small", mb // 2), ("big", 256 * mb)]:
        os.makedirs(tmp_path / name)
        block = (np.arange(min(n_tokens, 1 << 24)) * 7919 % 50257).astype("<u2").tobytes()
        with open(tmp_path / name / "train.bin", "wb") as f:
            for _ in range(n_tokens // (1 << 24) or 1):
                f.write(block)
        (np.arange(1000) % 50257).astype("<u2").tofile(tmp_path / name / "val.bin")
    env = dict(os.environ, NUMPY_GPT2_TOKENIZER=tokenizer_dir, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    peaks = {name: peak_memory([os.path.join(REPO_ROOT, "scripts", "train.py"),
                                "--data", tmp_path / name, "--out", tmp_path / f"out-{name}", *TINY],
                               env, budget=400 * mb)
             for name in ("small", "big")}
    (anon_small, file_small), (anon_big, file_big) = peaks["small"], peaks["big"]
    print(f"peak RssAnon, RssFile (MB): {peaks}")
    assert anon_big - anon_small < 16, peaks  # MB, against a 511 MB larger file
    assert file_big - file_small > 128, peaks  # the map was read (unless the kernel dropped it)
