"""Fixtures of the generation tests: one small checkpoint, loaded in float64 by numpy_gpt2 and
by transformers (the oracle)."""

import numpy as np
import pytest
import torch

import numpy_gpt2
from helpers.checkpoints import reference_model
from helpers.generation_checkpoint import write_generation_checkpoint

N_CTX = 64


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    directory = tmp_path_factory.mktemp("controls")
    write_generation_checkpoint(directory, n_ctx=N_CTX)
    return directory


@pytest.fixture(scope="module")
def model64(ckpt):
    return numpy_gpt2.load(ckpt, np.float64)


@pytest.fixture(scope="module")
def hf64(ckpt):
    return reference_model(ckpt, torch.float64)
