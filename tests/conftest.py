import os

import pytest
from hypothesis import HealthCheck, settings

# Torch-oracle examples are slow-ish and their timing is noisy on shared machines:
# no per-example deadline; a fixed example budget keeps the suite's time bounded.
settings.register_profile("default", deadline=None, max_examples=20, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def tokenizer_dir():
    """The real GPT-2 vocab.json + merges.txt, from $NUMPY_GPT2_TOKENIZER (CI: ../shared/gpt2-tokenizer)."""
    path = os.environ.get("NUMPY_GPT2_TOKENIZER")
    if not path or not os.path.isfile(os.path.join(path, "vocab.json")):
        pytest.skip("NUMPY_GPT2_TOKENIZER is not set to a directory with the GPT-2 vocab.json and "
                    "merges.txt (CI sets it to ../shared/gpt2-tokenizer)")
    return path
