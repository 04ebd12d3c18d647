"""Fixtures of the training tests: a token directory and an environment for training processes
(GPT-2's tokenizer, one thread, the audit hook of helpers.mpi_runs)."""

import os

import numpy as np
import pytest

from helpers import REPO_ROOT
from helpers.mpi_runs import AUDIT

ROOT = REPO_ROOT


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    rng.integers(0, 50257, 20000).astype("<u2").tofile(d / "train.bin")
    rng.integers(0, 50257, 2000).astype("<u2").tofile(d / "val.bin")
    return d


@pytest.fixture(scope="module")
def env(tokenizer_dir, tmp_path_factory):
    hook = tmp_path_factory.mktemp("audit")
    (hook / "sitecustomize.py").write_text(AUDIT)
    return dict(os.environ, NUMPY_GPT2_TOKENIZER=tokenizer_dir, OMP_NUM_THREADS="1",
                OPENBLAS_NUM_THREADS="1", PYTHONPATH=f"{hook}{os.pathsep}{ROOT}")
