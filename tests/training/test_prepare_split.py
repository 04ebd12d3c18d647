"""How scripts/prepare.py splits its documents (numpy_gpt2.training.data.write_token_splits).

Two or more documents: each to val with probability val_fraction (seeded), a split left
empty gets the last document. One document: cut by characters as train.py --data FILE.txt
(data.load_splits) and nanoGPT's data/shakespeare/prepare.py: Tiny Shakespeare gives
301,966 train and 36,059 val tokens, nanoGPT's published counts. No text at all: one error.
The library tests use a character-level "tokenizer" (one id per character), so any piece
boundary is a token boundary and the expected files are read off the text.
"""

from __future__ import annotations

import json
import os
import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_gpt2
from numpy_gpt2.training import data
from numpy_gpt2.training.data import write_token_splits
from numpy_gpt2.io.token_files import open_tokens
from helpers.run_scripts import load_script, run_script

EOT = 50256


def chars(text):
    return [ord(c) for c in text]


def stream_of(documents, cuts):
    """(text, ids, ends) pieces of the documents: each cut into pieces at the given fractions."""
    def stream():
        for doc in documents:
            at = sorted({int(f * len(doc)) for f in cuts} | {0, len(doc)})
            for a, b in zip(at, at[1:]):
                yield doc[a:b], chars(doc[a:b]), b == len(doc)
            if not doc:
                yield "", [], True
    return stream


def split_files(out):
    return [open_tokens(out / f"{n}.bin").tolist() if (out / f"{n}.bin").stat().st_size else []
            for n in ("train", "val")]


def as_documents(ids):
    docs, cur = [], []
    for t in ids:
        if t == EOT:
            docs.append(cur)
            cur = []
        else:
            cur.append(t)
    assert not cur
    return docs


text_st = st.text(st.characters(min_codepoint=32, max_codepoint=0xFFFF, exclude_categories=("Cs",)),
                  min_size=2, max_size=60)


@settings(max_examples=40)
@given(doc=text_st, cuts=st.lists(st.floats(0, 1), max_size=5),
       val_fraction=st.sampled_from([0.1, 0.3, 0.5, 0.9]), empties=st.integers(0, 2))
def test_one_document_is_cut_by_characters(tmp_path_factory, doc, cuts, val_fraction, empties):
    out = tmp_path_factory.mktemp("one")
    documents = [""] * empties + [doc]  # empty documents (empty files) are dropped
    stream = stream_of(documents, cuts)
    train, val = data.split_text(doc, 1 - Fraction(str(val_fraction)))  # as the library reads it
    if not (train and val):
        with pytest.raises(ValueError, match="too short to cut into a train and a val part"):
            write_token_splits(out, stream(), stream, val_fraction, 0, EOT, chars)
        return
    counts = write_token_splits(out, stream(), stream, val_fraction, 0, EOT, chars)
    assert split_files(out) == [chars(train), chars(val)]
    assert counts == {"train": {"tokens": len(train), "documents": 1},
                      "val": {"tokens": len(val), "documents": 1}, "split": "one document, cut by characters"}
    assert sorted(os.listdir(out)) == ["train.bin", "val.bin"]  # no temporary file left


@settings(max_examples=40)
@given(docs=st.lists(text_st, min_size=2, max_size=8), val_fraction=st.sampled_from([0.05, 0.3, 0.95]),
       seed=st.integers(0, 2**32))
def test_documents_split_whole_and_no_split_is_left_empty(tmp_path_factory, docs, val_fraction, seed):
    out = tmp_path_factory.mktemp("many")
    stream = stream_of(docs, [0.5])
    counts = write_token_splits(out, stream(), stream, val_fraction, seed, EOT, chars)
    train, val = (as_documents(ids) for ids in split_files(out))
    # The seeded draw, one per document in input order; an empty split takes the last document.
    rng = np.random.default_rng(seed)
    to_val = [rng.random() < val_fraction for _ in docs]
    if not any(to_val):
        to_val[-1] = True
    if all(to_val):
        to_val[-1] = False
    assert val == [chars(d) for d, v in zip(docs, to_val) if v]
    assert train == [chars(d) for d, v in zip(docs, to_val) if not v]
    assert counts["train"]["documents"] == len(train) >= 1 and counts["val"]["documents"] == len(val) >= 1
    assert counts["train"]["tokens"] + counts["val"]["tokens"] == sum(len(d) + 1 for d in docs)
    assert counts["split"] == "by document"


def test_no_text_or_too_little_is_one_clear_error(tmp_path):
    for documents, message in (([], "the inputs hold no text"), (["", ""], "the inputs hold no text"),
                               (["x"], "one document of 1 character"),
                               (["xy"], "too short to cut into a train and a val part")):
        stream = stream_of(documents, [])
        with pytest.raises(ValueError, match=message):
            write_token_splits(tmp_path / "o", stream(), stream, 0.1 if documents != ["xy"] else 0.6,
                               0, EOT, chars)
        assert os.listdir(tmp_path / "o") == []


# ----------------------------------------------------------------------------------------
# scripts/prepare.py on real files

def shakespeare_path():
    path = os.path.join(os.environ.get("NUMPY_GPT2_DATA", ""), "tinyshakespeare.txt")
    if not os.path.isfile(path):
        pytest.skip("NUMPY_GPT2_DATA is not set to a directory holding tinyshakespeare.txt")
    return path


@pytest.mark.parametrize("piece_chars", [None, 5000])
def test_tiny_shakespeare_alone_gives_nanogpts_split(tmp_path, tokenizer_dir, capsys, monkeypatch, piece_chars):
    """301,966 / 36,059 tokens, the very tokens train.py --data tinyshakespeare.txt trains on;
    also when the file is tokenized in many pieces (the cut then falls inside one)."""
    monkeypatch.setenv("NUMPY_GPT2_TOKENIZER", tokenizer_dir)
    path = shakespeare_path()
    if piece_chars:
        monkeypatch.setattr(load_script("prepare"), "PIECE_CHARS", piece_chars)
    status, out, err = run_script("prepare", [path, "--out", tmp_path / "ts"], capsys)
    assert status == 0, err
    assert "train.bin 301,966 tokens (1 documents), val.bin 36,059 tokens (1 documents)" in out
    splits = data.load_splits(path, numpy_gpt2.load_tokenizer(tokenizer_dir))
    for name in ("train", "val"):
        assert open_tokens(tmp_path / "ts" / f"{name}.bin").tolist() == splits[name].tolist(), name
    meta = json.loads((tmp_path / "ts" / "meta.json").read_text())
    assert meta["split"] == "one document, cut by characters"
    assert (meta["train"]["tokens"], meta["val"]["tokens"]) == (301_966, 36_059)


def test_two_documents_give_val_one(tmp_path, tokenizer_dir, capsys, monkeypatch):
    monkeypatch.setenv("NUMPY_GPT2_TOKENIZER", tokenizer_dir)
    enc = numpy_gpt2.load_tokenizer(tokenizer_dir)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("The first letter.", encoding="utf-8")
    (tmp_path / "in" / "b.txt").write_text("The second letter.", encoding="utf-8")
    status, out, err = run_script("prepare", [tmp_path / "in", "--out", tmp_path / "o"], capsys)
    assert status == 0, err
    train, val = (open_tokens(tmp_path / "o" / f"{n}.bin").tolist() for n in ("train", "val"))
    # Seed 2357 draws train for both; val takes the last.
    assert train == enc.encode_ordinary("The first letter.") + [EOT]
    assert val == enc.encode_ordinary("The second letter.") + [EOT]


def test_empty_inputs_exit_2_with_one_line(tmp_path, tokenizer_dir, capsys, monkeypatch):
    monkeypatch.setenv("NUMPY_GPT2_TOKENIZER", tokenizer_dir)
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "seps.txt").write_text("<|endoftext|><|endoftext|>", encoding="utf-8")
    (tmp_path / "nothing").mkdir()
    for argv, message in [([tmp_path / "empty.txt"], "the inputs hold no text"),
                          ([tmp_path / "dir"], "the inputs hold no text"),
                          ([tmp_path / "seps.txt", tmp_path / "empty.txt"], "the inputs hold no text"),
                          ([tmp_path / "nothing"], "no files in"),
                          ([tmp_path / "dir", tmp_path / "nothing"], "the inputs hold no text")]:
        status, out, err = run_script("prepare", [*argv, "--out", tmp_path / "o"], capsys)
        lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and "prepare:" not in line]
        assert status == 2 and len(lines) == 1 and re.search(message, lines[0]), err
        assert not (tmp_path / "o" / "train.bin").exists()
