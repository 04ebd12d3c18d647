"""The wheel as a user installs it: built from this checkout, installed into a fresh virtual
environment, used from a directory outside the checkout.

The fresh environment gets the wheel alone (--no-deps); its dependencies (NumPy, safetensors,
tiktoken, ...) come from the test environment's site-packages through PYTHONPATH, which Python
reads without running its .pth files, so the editable install of this checkout stays hidden:
what runs is the wheel's copy. CI builds the wheel once and passes it in $NUMPY_GPT2_WHEEL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from helpers import REPO_ROOT

PACKAGE = os.path.join(REPO_ROOT, "numpy_gpt2")
TEXT = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. "
        "First Citizen: You are all resolved rather to die than to famish? ") * 20


def subpackages() -> list[str]:
    """Every package directory of the source tree, as a wheel path: numpy_gpt2/, numpy_gpt2/io/, ..."""
    found = []
    for directory, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if "__init__.py" in files:
            found.append(os.path.relpath(directory, REPO_ROOT).replace(os.sep, "/") + "/")
    return sorted(found)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    given = os.environ.get("NUMPY_GPT2_WHEEL")
    if given:
        return given
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                            str(out), REPO_ROOT], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (path,) = out.glob("numpy_gpt2-*.whl")
    return str(path)


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """(python, bin directory, environment) of a fresh venv with the wheel installed."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = str(root / "bin" / "python")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
                              "--no-deps", "--no-index", wheel], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=sysconfig.get_paths()["purelib"], HF_HUB_OFFLINE="1",
               PATH=str(root / "bin") + os.pathsep + env.get("PATH", ""), OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", NUMPY_GPT2_THREADS="1")
    return python, str(root / "bin"), env


def test_the_wheel_holds_every_subpackage_the_license_and_the_version(wheel):
    import numpy_gpt2
    names = zipfile.ZipFile(wheel).namelist()
    missing = [p for p in subpackages() if p + "__init__.py" not in names]
    assert not missing, f"the wheel lacks {missing}"
    dist_info = f"numpy_gpt2-{numpy_gpt2.__version__}.dist-info/"
    assert any(n.startswith(dist_info) and n.endswith("LICENSE") for n in names), names[-10:]
    metadata = zipfile.ZipFile(wheel).read(dist_info + "METADATA").decode()
    assert f"\nVersion: {numpy_gpt2.__version__}\n" in metadata
    entry_points = zipfile.ZipFile(wheel).read(dist_info + "entry_points.txt").decode()
    assert "numpy-gpt2 = numpy_gpt2.cli:main" in entry_points


def test_the_installed_wheel_imports_every_module_outside_the_checkout(venv, tmp_path):
    python, _, env = venv
    code = ("import importlib, pkgutil, numpy_gpt2\n"
            "names = [m.name for m in pkgutil.walk_packages(numpy_gpt2.__path__, 'numpy_gpt2.')\n"
            "         if not m.name.endswith('__main__')]\n"
            "for name in names: importlib.import_module(name)\n"
            "print(numpy_gpt2.__file__, numpy_gpt2.__version__, len(names))\n")
    run = subprocess.run([python, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    where, version, count = run.stdout.split()
    import numpy_gpt2
    assert not where.startswith(REPO_ROOT) and where.startswith(str(os.path.dirname(os.path.dirname(python))))
    assert version == numpy_gpt2.__version__ and int(count) >= 40


def test_the_installed_command_trains_generates_and_scores(venv, tmp_path, tokenizer_dir):
    _, bin_dir, env = venv
    env = dict(env, NUMPY_GPT2_TOKENIZER=tokenizer_dir)
    (tmp_path / "input.txt").write_text(TEXT, encoding="utf-8")
    command = os.path.join(bin_dir, "numpy-gpt2")

    def run(*args):
        done = subprocess.run([command, *map(str, args)], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, (args, done.stderr[-3000:])
        return done

    assert "generate" in run("--help").stdout
    run("train", "--data", "input.txt", "--out", "run", "--n-layer", 1, "--n-head", 1, "--n-embd", 16,
        "--block-size", 16, "--batch-size", 2, "--max-iters", 3, "--eval-interval", 3, "--eval-iters", 1)
    assert (tmp_path / "run" / "model.safetensors").is_file()
    out = run("generate", "First", "--model", "run", "--max-new-tokens", 5, "--seed", 1).stdout
    assert out.startswith("First") and len(out) > len("First")
    score = run("perplexity", "--model", "run", "input.txt").stdout
    assert "perplexity" in score
    unknown = subprocess.run([command, "nosuch"], env=env, capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "unknown subcommand" in unknown.stderr
