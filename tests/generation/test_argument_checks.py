"""Library arguments that used to fail with a bare TypeError or a message naming something
else: each is now a ValueError naming the argument."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import numpy_gpt2
from numpy_gpt2.cli.common import flag_message
from numpy_gpt2.generation.checks import check_sampling_args
from helpers.run_scripts import run_script


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


@pytest.mark.parametrize("bad", [-1, -(2**70), 1.5, "1", True, [1, -2], b"x"])
def test_seed_is_checked_by_the_library_naming_seed(tiny, bad):
    params, config = tiny
    message = rf"^seed must be None, an integer >= 0 \(or a sequence of them\) or a numpy\.random\.Generator, got {re.escape(repr(bad))}$"
    with pytest.raises(ValueError, match=message):
        numpy_gpt2.generate(params, config, [1, 2], 3, seed=bad)
    with pytest.raises(ValueError, match=message):
        numpy_gpt2.init_params(config, seed=bad)
    with pytest.raises(ValueError, match=message) as error:
        check_sampling_args(3, seed=bad)
    # the command's wording: the flag takes integers only, so it says just that
    assert flag_message(error.value) == f"--seed must be an integer >= 0, got {bad!r}"


def test_good_seeds_still_work(tiny):
    params, config = tiny
    for seed in (0, 2**70, [1, 2], np.int64(5), None, np.random.default_rng(3)):
        assert len(list(numpy_gpt2.generate(params, config, [1, 2], 3, seed=seed))) == 3
    same = [list(numpy_gpt2.generate(params, config, [1, 2], 5, seed=7)) for _ in range(2)]
    assert same[0] == same[1]
    np.testing.assert_array_equal(numpy_gpt2.init_params(config, seed=[1, 2])["wte"]["weight"],
                                  numpy_gpt2.init_params(config, seed=[1, 2])["wte"]["weight"])


def test_generate_script_names_the_seed_flag(capsys):
    status, out, err = run_script("generate", ["hi", "--seed", "-1", "--model", "/nonexistent"], capsys)
    assert status == 2 and out == ""
    lines = err.strip().splitlines()  # "<program>: error: ..." (in-process: pytest's name)
    assert len(lines) == 1 and lines[0].endswith(": error: --seed must be an integer >= 0, got -1")
