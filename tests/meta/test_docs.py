"""The documentation runs: every code block of README.md and docs/*.md, the example ports,
the links, and the functions the equation tables name.

What is executed
----------------
Every fenced block marked ```python or ```bash in README.md and docs/*.md, in the order of
the file, one fresh Python process per file, the files concurrently (python blocks share one namespace, as in a
notebook; each bash block runs in `bash -e -o pipefail`, so a failing command fails the
test). ```text blocks (program output, usage synopses) are not executed. The working
directory is a new temporary directory in which `scripts/`, `examples/`, `docs/` and
`README.md` are symlinks to the repository's, so that paths resolve as written; the package
is importable through PYTHONPATH (as after `pip install -e .`).

Offline: HF_HUB_OFFLINE=1, and HF_HOME is a temporary Hugging Face cache pre-populated, in the
hub cache layout, with small random-weight GPT-2 checkpoints under the repo ids that
`numpy_gpt2.io.hub` resolves `gpt2` and `distilgpt2` to (2 layers, n_embd 32, GPT-2's real
vocabulary and tokenizer files from $NUMPY_GPT2_TOKENIZER). So `--model gpt2` and
`resolve_model("gpt2")` run exactly as a user types them, on a stand-in model: the tests
check that every command and call runs, not the text a real gpt2 would write. Files are
skipped with a reason when $NUMPY_GPT2_TOKENIZER is not set, and a file that trains on
`tinyshakespeare.txt` when $NUMPY_GPT2_DATA is not set (it is linked into the directory).

What is deliberately not executed, or changed
---------------------------------------------
- In bash blocks, the `&&`-separated commands that create a virtual environment
  (`python3 -m venv`), activate it (`. .venv/bin/activate`), `pip install` anything, or run
  the test suite (`python -m pytest`) are dropped, and the rest of the line runs. CI's
  `.ci/run` runs exactly those commands (it installs as the README says and runs the
  README's test command verbatim); running them here would reinstall packages or recurse
  into the test suite.
- For speed, the training commands of README.md and docs/training.md run for a step or two
  instead of minutes: SHORTENED below lists, per file, each text replaced (`--max-iters`
  and `--eval-iters` values, and docs/interp.md's example's `--batch`, only; every other flag
  runs as written). Other files run
  exactly as written.
- Benchmark commands (minutes each, and PyTorch) are shown in ```text blocks in
  docs/speed.md and not run here; tests/test_bench.py and tests/test_bench_train.py run their
  `--smoke` variants.
"""

import importlib
import json
import os
import re
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import numpy_gpt2
import numpy_gpt2.io.hub
from helpers import REPO_ROOT

ROOT = Path(REPO_ROOT)
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
LINKED = ["scripts", "examples", "docs", "README.md"]
SKIPPED_COMMANDS = re.compile(r"^(python3? -m venv\b|\. \.venv/bin/activate$|source \.venv/bin/activate$|"
                              r"pip3? install\b|python3? -m pip install\b|python3? -m pytest\b)")

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*$")


def code_blocks(path):
    """[(lang, code, line number)] of the fenced blocks of a Markdown file, indented ones
    (inside list items) included, with their indentation removed."""
    blocks, lines, i = [], Path(path).read_text(encoding="utf-8").split("\n"), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m["lang"]:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not (lines[i].strip() == "```"):
            body.append(lines[i])
            i += 1
        blocks.append((m["lang"], textwrap.dedent("\n".join(body)), start))
        i += 1
    return blocks


# {file: [(text in a bash block, what runs instead)]}: training shortened, nothing else.
SHORTENED = {
    "README.md": [("--max-iters 300 ", "--max-iters 1 "), ("--eval-iters 5", "--eval-iters 1")],
    "training.md": [("--max-iters 2000 ", "--max-iters 2 "), ("--eval-iters 20 ", "--eval-iters 1 "),
                    ("--max-iters 1000 ", "--max-iters 1 "), ("--eval-iters 5 ", "--eval-iters 1 ")],
    "interp.md": [("--max-iters 500 ", "--max-iters 1 "), ("--max-iters 1000", "--max-iters 2"),
                  ("--max-iters 2000", "--max-iters 3"),
                  ("--eval-iters 5", "--eval-iters 1"), ("--batch 10 ", "--batch 1 ")],
}


def runnable_bash(code, file):
    """The bash block as the test runs it (see the module docstring): set-up and test-suite
    commands dropped, training shortened (SHORTENED)."""
    for text, instead in SHORTENED.get(file, []):
        code = code.replace(text, instead)
    out = []
    for line in code.replace("\\\n", " ").split("\n"):
        comment = re.match(r"^\s*#", line)
        parts = [p.strip() for p in line.split("&&")] if not comment else [line]
        kept = [p for p in parts if comment or not SKIPPED_COMMANDS.match(p)]
        if kept:
            out.append(" && ".join(kept))
    return "\n".join(out)


DRIVER = r'''
import json, subprocess, sys, time, traceback
blocks = json.load(open(sys.argv[1]))
namespace, began = {"__name__": "__main__"}, time.perf_counter()
for lang, code, where in blocks:
    print(f"---- {where} ({lang}) at {time.perf_counter() - began:.1f} s", flush=True)
    if lang == "python":
        try:
            exec(compile(code, where, "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            print(f"FAILED: {where}", flush=True)
            sys.exit(1)
    else:
        proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code])
        if proc.returncode:
            print(f"FAILED: {where}: exit status {proc.returncode}", flush=True)
            sys.exit(1)
'''


def write_fake_hub_model(hf_home, repo, tokenizer_dir, seed):
    """A small random GPT-2 in the layout huggingface_hub leaves in its cache after a
    download: hub/models--owner--name/{refs/main, snapshots/<commit>/<files>}."""
    storage = Path(hf_home) / "hub" / ("models--" + repo.replace("/", "--"))
    snapshot = storage / "snapshots" / COMMIT
    config = numpy_gpt2.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_ctx=1024)
    numpy_gpt2.save_checkpoint(snapshot, numpy_gpt2.init_params(config, seed=seed), config,
                               tokenizer_dir=tokenizer_dir)
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory, tokenizer_dir):
    home = tmp_path_factory.mktemp("hf_home")
    for seed, alias in enumerate(["gpt2", "distilgpt2"]):
        write_fake_hub_model(home, numpy_gpt2.io.hub.HUB_ALIASES[alias], tokenizer_dir, seed)
    return home


def docs_env(hf_home):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), MPLBACKEND="Agg",
               HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",  # no network
               # `numpy-gpt2`: the console script `pip install -e .` put beside this Python
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return env


def start_file(path, hf_home, tmp):
    """Start running the file's blocks (in the background: the files run concurrently);
    returns the process, or the reason the file is skipped."""
    blocks = [(lang, code if lang == "python" else runnable_bash(code, path.name), f"{path.name}:{line}")
              for lang, code, line in code_blocks(path) if lang in ("python", "bash")]
    work = tmp / "work"
    work.mkdir(parents=True)
    for name in LINKED:
        os.symlink(ROOT / name, work / name)
    if "tinyshakespeare.txt" in "".join(code for _, code, _ in blocks):
        data = os.environ.get("NUMPY_GPT2_DATA")
        if not data or not os.path.isfile(os.path.join(data, "tinyshakespeare.txt")):
            return (f"{path.name} trains on tinyshakespeare.txt: NUMPY_GPT2_DATA is not set to a "
                    f"directory holding it (CI sets it to ../shared/data)")
        os.symlink(os.path.join(data, "tinyshakespeare.txt"), work / "tinyshakespeare.txt")
    (tmp / "blocks.json").write_text(json.dumps(blocks))
    with open(tmp / "output.txt", "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp / "blocks.json")], cwd=work,
                                env=docs_env(hf_home), stdout=log, stderr=subprocess.STDOUT)
    proc.output = tmp / "output.txt"
    return proc


@pytest.fixture(scope="module")
def running(hf_home, tmp_path_factory, request):
    """{Markdown file: its process (or why it is skipped)}, the selected files all started at once."""
    selected = [item.callspec.params["path"] for item in request.session.items
                if item.originalname == "test_every_code_block_runs"]
    procs = {path: start_file(path, hf_home, tmp_path_factory.mktemp(path.stem)) for path in selected}
    yield procs
    for proc in procs.values():
        if isinstance(proc, subprocess.Popen) and proc.poll() is None:
            proc.kill()
            proc.wait()


WITH_CODE = [p for p in MARKDOWN if any(lang in ("python", "bash") for lang, _, _ in code_blocks(p))]


@pytest.mark.parametrize("path", WITH_CODE, ids=lambda p: p.name)
def test_every_code_block_runs(path, running):
    proc = running[path]
    if isinstance(proc, str):
        pytest.skip(proc)
    returncode = proc.wait(timeout=900)
    assert returncode == 0, proc.output.read_text(errors="replace")[-8000:]


# ---- the example ports: compare.py's verdict, with and without their bug ----

def run(*args, cwd, env):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def first_failure(proc):
    lines = [line for line in proc.stdout.splitlines() if line.startswith("FIRST FAILURE: ")]
    return lines[0].split(":")[1].strip() if lines else None


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tokenizer_dir):
    """docs/debugging.md's checkpoint: 2 layers, n_embd 64, weights 10x GPT-2's initial scale."""
    config = numpy_gpt2.GPT2Config(n_layer=2, n_head=2, n_embd=64, n_ctx=128)
    params = numpy_gpt2.init_params(config, seed=0)
    for w in numpy_gpt2.flatten_params(params).values():
        if w.ndim == 2:
            w *= 10
    directory = tmp_path_factory.mktemp("tiny") / "tiny-gpt2"
    numpy_gpt2.save_checkpoint(directory, params, config, tokenizer_dir=tokenizer_dir)
    return directory, params, config


@pytest.mark.parametrize("example, grads, planted", [
    ("port_forward.py", False, "h.0.mlp.gelu"),   # the erf GELU: the first wrong tensor is the GELU's output
    ("port_train_step.py", True, "grad.h.1"),     # LayerNorm backward without its mean terms: ln_f's input
])
def test_example_ports(example, grads, planted, tiny_checkpoint, tmp_path, monkeypatch):
    directory, params, config = tiny_checkpoint
    tokens = np.array([15496, 11, 616, 3290, 318, 13779])  # "Hello, my dog is cute"
    ref = tmp_path / "ref.safetensors"
    if grads:
        targets = numpy_gpt2.next_token_targets(tokens)
        loss, act_grads, weight_grads = numpy_gpt2.gradients(params, config, tokens, targets)
        numpy_gpt2.save_activations(ref, tokens, {**act_grads, **weight_grads},
                                    {"model": str(directory), "dtype": "float32"},
                                    targets=targets, loss=loss)
    else:
        numpy_gpt2.save_activations(ref, tokens, numpy_gpt2.activations(params, config, tokens),
                                    {"model": str(directory), "dtype": "float32"})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    verdicts = {}
    for bug in (True, False):
        port = tmp_path / f"port-{bug}.safetensors"
        argv = [example, "--model", str(directory), "--ref", str(ref), "--out", str(port)]
        with monkeypatch.context() as m:  # the example's own command line, run in this process
            m.setattr(sys, "argv", argv + (["--bug"] if bug else []))
            runpy.run_path(str(ROOT / "examples" / example), run_name="__main__")
        verdicts[bug] = run(ROOT / "scripts" / "compare.py", ref, port, cwd=tmp_path, env=env)
    assert verdicts[True].returncode == 1, verdicts[True].stdout + verdicts[True].stderr
    assert first_failure(verdicts[True]) == planted, verdicts[True].stdout
    assert verdicts[False].returncode == 0, verdicts[False].stdout + verdicts[False].stderr
    assert first_failure(verdicts[False]) is None
    assert "OK: all" in verdicts[False].stdout


# ---- links and names ----

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading):
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    text = re.sub(r"```.*?```", "", Path(path).read_text(encoding="utf-8"), flags=re.S)
    return {slug(m[1]) for m in re.finditer(r"^#+ (.*)$", text, flags=re.M)}


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.name)
def test_relative_links_resolve(path):
    bad = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            bad.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            bad.append(f"{target}: no heading with anchor #{anchor}")
    assert not bad, f"{path.name}: " + "; ".join(bad)


EQUATION_TABLES = [ROOT / "README.md", ROOT / "docs" / "learn.md"]


def cited_functions(path):
    """`module.function` cited in the last column of the file's tables."""
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("|") and not line.startswith("| ---"):
            last = line.rstrip().rstrip("|").split(" | ")[-1]
            names.update(re.findall(r"`([a-z_]+)\.([A-Za-z_]\w*)`", last))
    return names


@pytest.mark.parametrize("path", EQUATION_TABLES, ids=lambda p: p.name)
def test_functions_in_the_equation_tables_exist(path):
    cited = cited_functions(path)
    assert len(cited) >= 10, cited
    missing = []
    for module, name in sorted(cited):
        try:
            found = hasattr(importlib.import_module(f"numpy_gpt2.{module}"), name)
        except ImportError:
            found = False
        if not found:
            missing.append(f"numpy_gpt2.{module}.{name}")
    assert not missing, f"{path.name} cites functions that do not exist: {missing}"


@pytest.mark.parametrize("path", EQUATION_TABLES, ids=lambda p: p.name)
def test_files_in_the_reading_order_exist(path):
    cited = set(re.findall(r"`(?:numpy_gpt2/)?(\w+\.py)`", path.read_text(encoding="utf-8")))
    missing = [f for f in sorted(cited)
               if not any((ROOT / d / f).exists() for d in ("numpy_gpt2", "scripts", "examples"))]
    assert not missing, f"{path.name} names files that do not exist: {missing}"
