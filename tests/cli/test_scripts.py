"""Every script in scripts/ behaves alike.

- It runs from a plain checkout, with numpy_gpt2 NOT importable from the Python environment:
  the scripts and the package are copied into a temporary directory and each script runs
  with `python -S` (no site module, so no .pth file installs the editable finder of
  `pip install -e .`) and PYTHONPATH = a copy of site-packages without numpy_gpt2 (the
  dependencies stay importable). The copied package records its own path when imported, so
  the test sees that the copy next to the script was used, not some other one.
- It runs pip-installed: the same copy of the script under the normal environment imports the
  installed package (the copy next to it is not used).
- A model whose numbers overflow makes the scripts exit with status 2 and one line on stderr
  naming the first non-finite activation (numpy_gpt2.NonFiniteError), never a traceback.

The scripts are found by a glob, so a new script is covered without changing this file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch

from helpers.checkpoints import checkpoint_tensors, make_config, random_state_dict, write_safetensors
from helpers.run_scripts import script_names
from helpers import REPO_ROOT

ROOT = REPO_ROOT
SCRIPTS = [f"{name}.py" for name in script_names()]  # not the helper module scripts/_cli.py
IMPORT_LOG = "NUMPY_GPT2_TEST_IMPORT_LOG"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of scripts/ and numpy_gpt2/ whose package appends its __file__ to $IMPORT_LOG."""
    repo = tmp_path_factory.mktemp("checkout") / "repo"
    for part in ("scripts", "numpy_gpt2"):
        shutil.copytree(os.path.join(ROOT, part), repo / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    with open(repo / "numpy_gpt2" / "__init__.py", "a") as f:
        f.write(f"\nimport os as _os\nif _os.environ.get({IMPORT_LOG!r}):\n"
                f"    with open(_os.environ[{IMPORT_LOG!r}], 'a') as _f:\n"
                f"        _f.write(__file__ + '\\n')\n")
    return repo


@pytest.fixture(scope="module")
def site_without_package(tmp_path_factory):
    """A directory of links to everything in site-packages except numpy_gpt2's own entries
    (the package itself if installed normally, the editable finder if installed with -e)."""
    site = tmp_path_factory.mktemp("site")
    for directory in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for name in os.listdir(directory):
            if "numpy_gpt2" in name.lower() or name.startswith("__editable__"):
                continue
            if not (site / name).exists():
                os.symlink(os.path.join(directory, name), site / name)
    return site


def run(args, *, cwd, env_extra, bare: bool, timeout=120):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", IMPORT_LOG)}
    env.update(env_extra)
    python = [sys.executable, "-S"] if bare else [sys.executable]
    done = subprocess.run(python + [str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          timeout=timeout)
    # Decoded by hand: text=True would turn a progress bar's \r into \n.
    done.stdout, done.stderr = done.stdout.decode(), done.stderr.decode()
    return done


def test_the_bare_environment_cannot_import_numpy_gpt2_but_has_its_dependencies(site_without_package, tmp_path):
    """The premise of the checkout test: without the copy, `import numpy_gpt2` fails."""
    env = {"PYTHONPATH": str(site_without_package)}
    done = run(["-c", "import numpy_gpt2"], cwd=tmp_path, env_extra=env, bare=True)
    assert done.returncode != 0 and "No module named 'numpy_gpt2'" in done.stderr
    done = run(["-c", "import numpy, safetensors, tiktoken, huggingface_hub, tqdm"], cwd=tmp_path,
               env_extra=env, bare=True)
    assert done.returncode == 0, done.stderr
    done = run(["-c", "import numpy_gpt2; print(numpy_gpt2.__file__)"], cwd=tmp_path, env_extra={}, bare=False)
    assert done.returncode == 0 and done.stdout.startswith(ROOT), done  # the -e install, normally


def test_scripts_are_found():
    assert {"generate.py", "perplexity.py", "train.py", "dump.py", "compare.py"} <= set(SCRIPTS)
    assert not any(s.startswith(("bench", "_")) for s in SCRIPTS)  # benchmarks/, helpers


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_from_a_plain_checkout(script, checkout, site_without_package, tmp_path):
    log = tmp_path / "imported.txt"
    done = run([checkout / "scripts" / script, "--help"], cwd=tmp_path, bare=True,
               env_extra={"PYTHONPATH": str(site_without_package), IMPORT_LOG: str(log)})
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and "Traceback" not in done.stderr
    assert log.exists(), f"{script} did not import numpy_gpt2 (use the import idiom of the other scripts)"
    assert set(log.read_text().split()) == {str(checkout / "numpy_gpt2" / "__init__.py")}


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_pip_installed(script, checkout, tmp_path):
    """Under the normal environment the installed package wins over the copy next to the script."""
    log = tmp_path / "imported.txt"
    done = run([checkout / "scripts" / script, "--help"], cwd=tmp_path, bare=False,
               env_extra={IMPORT_LOG: str(log)})
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and "Traceback" not in done.stderr
    assert not log.exists(), "the copy was imported although numpy_gpt2 is installed"


# ---- non-finite numbers: exit status 2, one line -------------------------------------------------

@pytest.fixture(scope="module")
def overflowing_checkpoint(tmp_path_factory, tokenizer_dir):
    """GPT-2's vocabulary, random weights, all finite; but block 1's q/k/v projection is 1e19
    times too large, so in float32 q.k overflows: the attention probabilities are NaN."""
    directory = tmp_path_factory.mktemp("overflow")
    config = make_config(n_layer=2, n_head=2, n_embd=32, n_ctx=64, vocab_size=50257)
    sd = random_state_dict(config, seed=3)
    sd["h.1.attn.c_attn.weight"] = sd["h.1.attn.c_attn.weight"] * 1e19
    assert torch.isfinite(sd["h.1.attn.c_attn.weight"]).all()
    write_safetensors(directory / "model.safetensors", checkpoint_tensors(sd, config, "hub"),
                      metadata={"format": "pt"}, align=False)
    config.save_pretrained(directory)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(tokenizer_dir, name), directory)
    return directory


@pytest.mark.parametrize("script, args", [
    ("generate.py", ["Hello world", "--max-new-tokens", "5"]),
    ("generate.py", ["Hello world", "--max-new-tokens", "5", "--num-samples", "3", "--temperature", "0"]),
    ("perplexity.py", ["{text}"]),
])
def test_non_finite_numbers_exit_2_with_one_line(script, args, overflowing_checkpoint, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("The tower is 324 metres tall, about the same height as an 81-storey building.")
    args = [a.format(text=text) for a in args] + ["--model", overflowing_checkpoint]
    done = run([os.path.join(ROOT, "scripts", script), *args], cwd=tmp_path, bare=False,
               env_extra={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr
    # Lines as a terminal shows them: a progress bar erased with \r leaves nothing.
    shown = [line.rsplit("\r", 1)[-1] for line in done.stderr.split("\n")]
    lines = [line for line in shown if line.strip() and not line.startswith("loaded ")]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{script}: error: ")
    assert "non-finite logits (nan)" in lines[0] and "is h.1.attn.softmax (nan at " in lines[0]
    assert "every weight is finite, so the values overflowed" in lines[0]
