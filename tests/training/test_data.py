"""numpy_gpt2.training.data: the 90/10 character split, tokenization, random windows, fixed eval batches."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_gpt2
from numpy_gpt2.training import data

DATA_ENV = "NUMPY_GPT2_DATA"


@given(text=st.text(min_size=1, max_size=200))
def test_split_is_first_90_percent_of_characters(text):
    train, val = data.split_text(text)
    assert train + val == text
    assert len(train) == int(len(text) * 0.9)  # characters, not bytes: "é" counts once


def test_split_counts_characters_not_bytes():
    text = "é" * 90 + "a" * 10  # 190 bytes in UTF-8
    assert data.split_text(text) == ("é" * 90, "a" * 10)


def test_read_text_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot read the data file"):
        data.read_text(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        data.read_text(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"not UTF-8 text \([a-z ]+: byte 0xe9 at offset 3\)"):
        data.read_text(tmp_path / "latin1.txt")
    with pytest.raises(ValueError, match="cannot read"):
        data.read_text(tmp_path)  # a directory
    (tmp_path / "ok.txt").write_text("héllo\n", encoding="utf-8")
    assert data.read_text(tmp_path / "ok.txt") == "héllo\n"


@settings(max_examples=30)
@given(n=st.integers(2, 300), block_size=st.integers(1, 40), batch_size=st.integers(1, 8),
       seed=st.integers(0, 2**32 - 1))
def test_get_batch_windows_are_slices_with_shifted_targets(n, block_size, batch_size, seed):
    tokens = np.random.default_rng(seed).permutation(n * 3)[:n]  # distinct ids: offsets are recoverable
    if n < block_size + 1:
        with pytest.raises(ValueError, match=f"fewer than block_size \\+ 1 = {block_size + 1}"):
            data.check_split_length(tokens, block_size, "train")
        return
    data.check_split_length(tokens, block_size, "train")
    x, y = data.get_batch(tokens, block_size, batch_size, np.random.default_rng(seed))
    assert x.shape == y.shape == (batch_size, block_size) and x.dtype == y.dtype == np.int64
    position = {int(t): i for i, t in enumerate(tokens)}
    for row_x, row_y in zip(x, y):
        start = position[int(row_x[0])]
        assert 0 <= start <= n - block_size - 1
        np.testing.assert_array_equal(row_x, tokens[start:start + block_size])
        np.testing.assert_array_equal(row_y, tokens[start + 1:start + 1 + block_size])
    # Seeded: the same generator state gives the same batch.
    x2, _ = data.get_batch(tokens, block_size, batch_size, np.random.default_rng(seed))
    np.testing.assert_array_equal(x, x2)


def test_get_batch_covers_every_start_uniformly():
    # nanoGPT draws starts from [0, len - block_size): every window of block_size + 1 tokens.
    tokens = np.arange(20)
    rng = np.random.default_rng(0)
    starts = np.concatenate([data.get_batch(tokens, 5, 64, rng)[0][:, 0] for _ in range(200)])
    counts = np.bincount(starts, minlength=20)
    assert set(np.flatnonzero(counts)) == set(range(15))  # 0 .. 20 - 5 - 1
    assert counts[:15].min() > 0.8 * counts[:15].mean()  # 12800 draws, 853 expected each


def test_eval_batches_are_fixed_by_seed():
    tokens = np.arange(1000)
    a = data.eval_batches(tokens, 16, 4, 3, seed=[7, 2])
    b = data.eval_batches(tokens, 16, 4, 3, seed=[7, 2])
    c = data.eval_batches(tokens, 16, 4, 3, seed=[7, 3])
    assert len(a) == 3
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_load_splits_tokenizes_each_split(tmp_path, tokenizer_dir):
    enc = numpy_gpt2.load_tokenizer(tokenizer_dir)
    text = "Hello world. <|endoftext|> is the separator token here.\n" * 20
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    splits = data.load_splits(tmp_path / "t.txt", enc)
    cut = int(len(text) * 0.9)
    special = {"<|endoftext|>"}
    assert splits["train"].tolist() == enc.encode(text[:cut], allowed_special=special)
    assert splits["val"].tolist() == enc.encode(text[cut:], allowed_special=special)
    assert (splits["train"] == 50256).sum() == text[:cut].count("<|endoftext|>") == 18
    assert enc.decode(splits["train"].tolist()) + enc.decode(splits["val"].tolist()) == text


@settings(max_examples=20)
@given(pieces=st.lists(st.sampled_from(["<|endoftext|>", "<|endo", "ftext|>", " ", "\n", "a", "Hi",
                                        "é", "<|", "|>", "12", "'s"]), max_size=30))
def test_encode_maps_every_literal_endoftext_to_50256(tokenizer_dir, pieces):
    """The one rule for text files: separators become 50256, the rest encode_ordinary."""
    enc = numpy_gpt2.load_tokenizer(tokenizer_dir)
    text = "".join(pieces)
    ids = data.encode(enc, text).tolist()
    assert ids == enc.encode(text, allowed_special={"<|endoftext|>"})
    assert ids.count(50256) == text.count("<|endoftext|>")


def test_tiny_shakespeare_split_sizes(tokenizer_dir):
    """The token counts the shared data's README (and nanoGPT) report for this split."""
    directory = os.environ.get(DATA_ENV)
    path = os.path.join(directory or "", "tinyshakespeare.txt")
    if not directory or not os.path.isfile(path):
        pytest.skip(f"{DATA_ENV} is not set to a directory holding tinyshakespeare.txt "
                    f"(CI sets it to ../shared/data)")
    splits = data.load_splits(path, numpy_gpt2.load_tokenizer(tokenizer_dir))
    assert (len(splits["train"]), len(splits["val"])) == (301_966, 36_059)
