"""Library arguments that used to fail with a bare TypeError or a message naming something
else: each is now a ValueError naming the argument."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import numpy_gpt2


@pytest.fixture(scope="module")
def tiny():
    config = numpy_gpt2.GPT2Config(n_layer=1, n_head=2, n_embd=8, n_ctx=8, vocab_size=11)
    return numpy_gpt2.init_params(config, seed=0), config


@pytest.mark.parametrize("bad", [None, 3, ["tok"]])
def test_save_checkpoint_names_a_missing_tokenizer_dir(tmp_path, tiny, bad):
    params, config = tiny
    with pytest.raises(ValueError, match=r"tokenizer_dir must be a directory holding GPT-2's "
                                         rf"vocab\.json and merges\.txt .*got {re.escape(repr(bad))}"):
        numpy_gpt2.save_checkpoint(tmp_path / "out", params, config, tokenizer_dir=bad)
    assert not os.path.exists(tmp_path / "out") or not os.listdir(tmp_path / "out")


def test_save_checkpoint_with_tokenizer_files_still_works(tmp_path, tiny, tokenizer_dir):
    params, config = tiny
    numpy_gpt2.save_checkpoint(tmp_path / "out", params, config, tokenizer_dir=tokenizer_dir)
    loaded, cfg = numpy_gpt2.load(tmp_path / "out")
    assert cfg == config
    np.testing.assert_array_equal(loaded["wte"]["weight"], params["wte"]["weight"])
