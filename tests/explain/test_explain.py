"""The explain page (numpy_gpt2.explain, `numpy-gpt2 explain`): its numbers are the library's
(activations, gradients, forward, the sampling filters, finite differences), the visible
text is formatted from the embedded JSON, the heatmaps are the arrays, the file asks for
nothing over the network, a real browser (chromium, headless) renders it without console
messages, and the command refuses bad input with one line and no file."""

from __future__ import annotations

import base64
import html.parser
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

import numpy_gpt2
from numpy_gpt2 import bpe
from numpy_gpt2.explain import explain_page
from numpy_gpt2.explain.values import GENERATOR, cell_text, fmt, resolve
from numpy_gpt2.explain.png import colors
from numpy_gpt2.explain.walk import head_stages, logit_gradient, walk
from numpy_gpt2.generation.sampling import filter_logits, softmax
from helpers import REPO_ROOT
from helpers.run_scripts import in_process

PROMPT = "Hello, world! The quick brown fox jumps over the lazy dog's tail."
TARGET = " It ran away"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def encoder(tokenizer_dir):
    return bpe.load(tokenizer_dir)


@pytest.fixture(scope="module")
def model():
    config = numpy_gpt2.GPT2Config(n_layer=3, n_head=4, n_embd=32, n_ctx=48)
    return numpy_gpt2.init_params(config, seed=3, dtype=np.float64), config


@pytest.fixture(scope="module")
def page(model, encoder):
    params, config = model
    return explain_page(params, config, encoder, PROMPT, layer=1, head=2, target=TARGET,
                        temperature=0.7, top_k=5, top_p=0.6, model="tiny")


@pytest.fixture(scope="module")
def data(page):
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, flags=re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


@pytest.fixture(scope="module")
def numbers(model, encoder):
    """walk()'s unrounded numbers for the same run (the page's JSON rounds to 7 digits)."""
    params, config = model
    return walk(params, config, encoder, PROMPT, layer=1, head=2, target=TARGET, temperature=0.7,
                top_k=5, top_p=0.6)


def close(shown, expected, rtol=2e-6):
    """The JSON's 7 significant digits against the library's float64 value."""
    shown = np.asarray(shown, dtype=np.float64)
    np.testing.assert_allclose(shown, expected, rtol=rtol, atol=1e-300)


# ---- the numbers are the library's ------------------------------------------------------------

def test_tokens_are_the_tokenizers(data, encoder, tokenizer_dir):
    ids = numpy_gpt2.load_tokenizer(tokenizer_dir).encode(PROMPT)
    assert data["tokens"]["ids"] == ids  # tiktoken's ids
    assert [i for p in data["tokens"]["pieces"] for i in p["ids"]] == ids
    assert "".join(p["text"] for p in data["tokens"]["pieces"]) == PROMPT
    assert "".join(data["tokens"]["texts"]) == PROMPT
    fox = next(p for p in data["tokens"]["pieces"] if p["text"] == " fox")
    assert fox["steps"][-1]["symbols"] == ["Ġfox"] and fox["ids"] == [21831]
    assert [s["rank"] for s in fox["steps"]] == sorted(s["rank"] for s in fox["steps"])


def test_embeddings_and_layers_are_the_recorded_activations(model, data, numbers):
    params, config = model
    tokens = np.array(data["tokens"]["ids"])
    acts = numpy_gpt2.activations(params, config, tokens, "*,*softmax")
    x0 = acts["wte"] + acts["wpe"]
    for name, a in (("wte", acts["wte"]), ("wpe", acts["wpe"]), ("sum", x0)):
        close(data["embeddings"][name]["rows"], a[:, :8])
        close(data["embeddings"][name]["norm"], np.linalg.norm(a, axis=-1))
    inputs = [x0] + [acts[f"h.{i}"] for i in range(config.n_layer - 1)]
    for i, layer in enumerate(data["layers"]):
        close(layer["resid_norm"]["in"], np.linalg.norm(inputs[i], axis=-1))
        close(layer["resid_norm"]["mid"], np.linalg.norm(inputs[i] + acts[f"h.{i}.attn"], axis=-1))
        close(layer["resid_norm"]["out"], np.linalg.norm(acts[f"h.{i}"], axis=-1))
        close(layer["attn_norm"], np.linalg.norm(acts[f"h.{i}.attn"], axis=-1))
        close(layer["mlp_norm"], np.linalg.norm(acts[f"h.{i}.mlp.c_proj"], axis=-1))
        # the LayerNorm statistics rebuild the recorded ln_1 output
        st = numbers["layers"][i]["ln_1"]
        ln = params["h"][i]["ln_1"]
        rebuilt = (inputs[i] - st["mean"][:, None]) * st["scale"][:, None] * ln["weight"] + ln["bias"]
        np.testing.assert_allclose(rebuilt, acts[f"h.{i}.ln_1"], rtol=1e-10, atol=1e-12)
        close(layer["ln_1"]["scale"], 1 / np.sqrt(st["var"] + config.layer_norm_epsilon))
        np.testing.assert_array_equal(numbers["layers"][i]["img_attn"], acts[f"h.{i}.attn.softmax"])


def test_the_five_stages_rebuild_the_attention(model, data, numbers):
    params, config = model
    tokens = np.array(data["tokens"]["ids"])
    acts = numpy_gpt2.activations(params, config, tokens, "h.1.*,h.1.attn.softmax")
    det, H = data["detail"], config.n_head
    assert (det["layer"], det["head"]) == (1, 2)
    np.testing.assert_allclose(numbers["detail"]["probs"], acts["h.1.attn.softmax"][2], rtol=1e-12, atol=1e-15)
    close(det["scaled"], np.asarray(det["scores"]) / np.sqrt(config.n_embd // H), rtol=1e-5)
    masked = np.array([[float(v) for v in row] for row in det["masked"]])
    assert np.isneginf(masked[np.triu_indices(len(tokens), 1)]).all()
    assert np.isfinite(masked[np.tril_indices(len(tokens))]).all()
    # every head's z, concatenated and projected, is the recorded attention output
    zs = [head_stages(acts["h.1.attn.c_attn"], H, h, config.attention_scale(1))["z"] for h in range(H)]
    c_proj = params["h"][1]["attn"]["c_proj"]
    np.testing.assert_allclose(np.concatenate(zs, -1) @ c_proj["weight"] + c_proj["bias"], acts["h.1.attn"],
                               rtol=1e-10, atol=1e-13)
    close(det["z"], zs[2])
    D = config.n_embd // H
    close(det["contribution_norm"], np.linalg.norm(zs[2] @ c_proj["weight"][2 * D:3 * D], axis=-1))
    # the MLP's most active neurons are the largest post-GELU values, with their pre-GELU ones
    post, pre = acts["h.1.mlp.gelu"], acts["h.1.mlp.c_fc"]
    idx = np.array(det["mlp"]["neurons"])
    close(det["mlp"]["post"], np.take_along_axis(post, idx, -1))
    close(det["mlp"]["pre"], np.take_along_axis(pre, idx, -1))
    assert (np.take_along_axis(post, idx[:, -1:], -1) >= np.sort(post, -1)[:, -idx.shape[1]:][:, :1]).all()


def test_logit_lens_rows_are_truncated_models(model, data):
    """Row i of the lens is the prediction of the same model cut after block i (its own
    forward, with ln_f and the head); the last row is the full model's."""
    params, config = model
    tokens = np.array(data["tokens"]["ids"])
    for i in range(config.n_layer):
        cut = dict(params, h=params["h"][:i + 1])
        probs = softmax(numpy_gpt2.forward(cut, numpy_gpt2.GPT2Config(
            n_layer=i + 1, n_head=config.n_head, n_embd=config.n_embd, n_ctx=config.n_ctx), tokens))
        assert data["lens"]["top"][i + 1] == probs.argmax(-1).tolist()
        close(data["lens"]["prob"][i + 1], probs.max(-1))
    assert data["lens"]["rows"][-1] == f"h.{config.n_layer - 1}"


def test_output_uses_the_sampling_filters(model, data):
    params, config = model
    logits = numpy_gpt2.forward(params, config, np.array(data["tokens"]["ids"]))[-1]
    out = data["output"]
    assert out["ids"] == np.argsort(-logits, kind="stable")[:10].tolist()
    close(out["logits"], logits[out["ids"]])
    close(out["stages"][0]["probs"], softmax(logits)[out["ids"]])
    final = softmax(filter_logits(logits, 0.7, 5, 0.6))  # what generate draws from
    close(out["stages"][-1]["probs"], final[out["ids"]])
    assert out["stages"][-1]["kept"] == int((final > 0).sum()) and out["stages"][2]["kept"] == 5
    assert [s["stage"] for s in out["stages"]] == ["softmax(logits)", "temperature 0.7", "top-k 5", "top-p 0.6"]


def test_target_loss_gradients_and_saliency(model, data, numbers, encoder):
    params, config = model
    tokens, target = data["tokens"]["ids"], encoder.encode(TARGET)
    T = len(tokens)
    seq = np.array(tokens + target[:-1])
    targets = np.array([-100] * (T - 1) + target)
    loss, act_grads, _ = numpy_gpt2.gradients(params, config, seq, targets)
    tg = data["target"]
    assert tg["ids"] == target
    close(tg["loss"], loss)
    assert loss == pytest.approx(numpy_gpt2.loss_and_grads(params, config, seq, targets)[0], rel=1e-12)
    close(tg["grad_norms"], [np.linalg.norm(act_grads[n]) for n in tg["grad_names"]])
    assert tg["grad_names"][0] == "grad.logits" and tg["grad_names"][-1] == "grad.wte"
    assert len(tg["grad_names"]) == 4 + 8 * config.n_layer
    close(tg["saliency_loss"], np.linalg.norm(act_grads["grad.wte"][:T], axis=-1))
    # d logit[T-1, first target] / d x0[t], against central differences on wpe[t] (= x0[t])
    acts = numpy_gpt2.activations(params, config, np.array(tokens))
    x0 = acts["wte"] + acts["wpe"]
    inputs = [x0] + [acts[f"h.{i}"] for i in range(config.n_layer - 1)]
    grad = logit_gradient(params, config, inputs, acts[f"h.{config.n_layer - 1}"], T - 1, target[0])
    close(tg["saliency_logit"], np.linalg.norm(grad, axis=-1))
    close(tg["grad_x_input"], (grad * x0).sum(-1), rtol=1e-5)
    assert np.abs(grad[T - 1]).sum() > 0
    rng = np.random.default_rng(0)
    for t in (0, T // 2, T - 1):
        u = rng.standard_normal(config.n_embd)
        f = []
        for eps in (1e-5, -1e-5):
            p = dict(params, wpe={"weight": params["wpe"]["weight"].copy()})
            p["wpe"]["weight"][t] += eps * u
            f.append(numpy_gpt2.forward(p, config, np.array(tokens))[T - 1, target[0]])
        assert grad[t] @ u == pytest.approx((f[0] - f[1]) / 2e-5, rel=1e-6, abs=1e-9)


# ---- what the page shows is the JSON ---------------------------------------------------------

class Tables(html.parser.HTMLParser):
    """Every <table data-src=...>: its attributes and its <td> cells' text and titles, in order."""

    def __init__(self):
        super().__init__()
        self.tables, self.cell, self.images = [], None, {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and "data-src" in attrs:
            self.tables.append({"attrs": attrs, "cells": [], "titles": []})
        elif tag == "td" and self.tables and self.cell is None:
            self.cell = ""
            self.tables[-1]["titles"].append(attrs.get("title"))
        elif tag == "img" and "id" in attrs:
            self.images[attrs["id"]] = attrs["src"]

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.tables[-1]["cells"].append(self.cell)
            self.cell = None
        elif tag == "table":
            self.cell = None

    def handle_data(self, text):
        if self.cell is not None:
            self.cell += text


def parsed(page):
    p = Tables()
    p.feed(page)
    return p


def shown_values(data, attrs, key="data-src"):
    """The JSON values a table shows, row by row, cut as its data-rows / data-cols say."""
    value = resolve(data, attrs[key])
    rows = [[value]] if not isinstance(value, list) else [value] if not value or not isinstance(value[0], list) else value
    start = int(attrs.get("data-rows", 0))
    cols = int(attrs["data-cols"]) if "data-cols" in attrs else None
    return [v for row in rows[start if start >= 0 else len(rows) + start:] for v in (row[:cols] if cols else row)]


def test_visible_numbers_are_the_json(page, data):
    tables = parsed(page).tables
    assert len(tables) >= 25
    sources = {t["attrs"]["data-src"] for t in tables}
    for expected in ("detail.probs", "detail.masked", "lens.texts", "output.stages.*.probs",
                     "target.grad_norms", "layers.*.resid_norm.out", "detail.mlp.post"):
        assert expected in sources
    n = 0
    for t in tables:
        values = shown_values(data, t["attrs"])
        assert t["cells"] == [cell_text(v) for v in values], t["attrs"]
        if "data-titles" in t["attrs"]:
            assert t["titles"] == [fmt(v) for v in shown_values(data, t["attrs"], "data-titles")]
        n += len(values)
    assert n > 1000
    text = re.sub(r"<[^>]+>", " ", page)
    for word in ("model", "tiny", "float64", f"numpy_gpt2 {numpy_gpt2.__version__}", "−∞"):
        assert word in text


def test_heatmaps_are_the_arrays(page, numbers):
    """The attention thumbnails are the recorded probabilities, pixel for pixel."""
    images = parsed(page).images
    assert len([k for k in images if k.startswith("att-")]) == 3 * 4
    for layer, head in ((0, 0), (2, 3)):
        png = base64.b64decode(images[f"att-{layer}-{head}"].split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        w, h = struct.unpack(">II", png[16:24])
        idat = png[png.index(b"IDAT") + 4:png.index(b"IEND") - 8]
        raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
        assert (raw[:, 0] == 0).all()
        pixels = raw[:, 1:].reshape(h, w, 3)
        np.testing.assert_array_equal(pixels, colors(numbers["layers"][layer]["img_attn"][head], "prob"))


def test_no_network(page):
    assert "http" not in page.lower()
    assert "@import" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?//""", page)
    for m in re.finditer(r"url\(", page):
        assert page[m.end():m.end() + 5].strip("'\"").startswith("data:")
    for m in re.finditer(r"""(?<![\w-])(src|href)="([^"]*)\"""", page):
        assert m.group(2).startswith(("data:", "#")), m.group(0)[:80]
    assert "<link" not in page and "<iframe" not in page


# ---- a real browser ----------------------------------------------------------------------------

def chromium(path, tmp_path, *flags):
    """(console lines, stdout) of headless chromium opening the file with the given flags."""
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (apt-get install -y chromium)")
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    run = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                          *flags, f"file://{path}"], capture_output=True, text=True, timeout=180)
    return [ln for ln in run.stderr.splitlines() if ":CONSOLE" in ln], run.stdout, run.stderr


def render_in_chromium(path, tmp_path, height=3000):
    """(console lines, screenshot pixels) of chromium rendering the file, headless."""
    shot = tmp_path / "shot.png"
    console, _, err = chromium(path, tmp_path, f"--window-size=1280,{height}", f"--screenshot={shot}")
    assert shot.exists(), err[-2000:]
    import matplotlib.image
    return console, matplotlib.image.imread(shot)


def test_chromium_renders_without_console_messages(page, tmp_path):
    pytest.importorskip("matplotlib")
    # the check itself: a page with a script error does show a console line
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body>x<script>noSuchFunction()</script></body></html>")
    console, _ = render_in_chromium(bad, tmp_path, 400)
    assert any("noSuchFunction" in ln for ln in console)
    good = tmp_path / "walk.html"
    good.write_text(page, encoding="utf-8")
    console, pixels = render_in_chromium(good, tmp_path)
    assert console == []
    assert pixels.shape[0] == 3000 and pixels.std() > 0.05  # not blank
    colored = (np.abs(pixels[..., 0] - pixels[..., 2]) > 0.2).mean()
    assert colored > 0.01  # the heatmaps are drawn (red/blue), not only text


def test_chromium_clicking_a_head_shows_it_large(page, tmp_path):
    clicked = tmp_path / "clicked.html"
    clicked.write_text(page.replace("</body>", "<script>document.getElementById('att-2-3').click()</script></body>"),
                       encoding="utf-8")
    console, dom, err = chromium(clicked, tmp_path, "--dump-dom")
    assert console == [] and dom, err[-2000:]
    images = parsed(dom).images
    big = re.search(r'<image id="att-big"[^>]*href="([^"]+)"', dom)
    assert big and big.group(1) == images["att-2-3"] != images["att-1-2"]
    assert '<h3 id="att-big-title">layer 2, head 3 (click any square above)</h3>' in dom


# ---- the command --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_dir):
    d = tmp_path_factory.mktemp("explain") / "ckpt"
    config = numpy_gpt2.GPT2Config(n_layer=2, n_head=2, n_embd=16, n_ctx=24)
    numpy_gpt2.save_checkpoint(d, numpy_gpt2.init_params(config, seed=1), config, tokenizer_dir)
    return d


def test_command_writes_the_page(checkpoint, tmp_path):
    out = tmp_path / "walk.html"
    run = in_process("explain", ["The quick brown fox", "--model", checkpoint, "--out", out,
                                 "--target", " jumps", "--layer", "1", "--head", "1"], tmp_path, budget=60)
    assert run.status == 0, run.err
    assert run.out.startswith(f"wrote {out} (")
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.endswith("</html>\n")
    assert f"model <b>{checkpoint}</b> · dtype float32" in text
    assert sorted(os.listdir(tmp_path)) == ["walk.html"]  # nothing staged is left


@pytest.mark.parametrize("argv, message", [
    (["", "--out", "{out}"], "PROMPT is empty"),
    ([" ".join(["word"] * 30), "--out", "{out}"], "PROMPT is 30 tokens, longer than the model's context of 24 tokens"),
    (["Hi", "--out", "{out}", "--target", "x" + " y" * 24], "PROMPT is 1 tokens plus 24 target tokens, longer"),
    (["Hi", "--out", "{out}", "--layer", "2"], "--layer must be an integer in 0..1"),
    (["Hi", "--out", "{out}", "--head", "-1"], "--head must be an integer in 0..1"),
    (["Hi", "--out", "{out}", "--top-p", "0"], "--top-p must be in (0, 1] (1 = off), got 0.0"),
    (["Hi", "--out", "{out}", "--top-p", "nan"], "--top-p must be in (0, 1] (1 = off), got nan"),
    (["Hi", "--out", "{out}", "--top-k", "-1"], "--top-k must be an integer >= 0 (0 = off), got -1"),
    (["Hi", "--out", "{out}", "--target", ""], "--target is empty"),
    (["Hi", "--out", "{dir}/mine.txt"], "already exists and was not written by this command"),
    (["Hi", "--out", "{dir}/readonly/walk.html"], "is not writable"),
    (["Hi", "--out", "{out}/walk.html"], "is not a directory"),
    (["Hi", "--out", "{dir}"], "is a directory"),
])
def test_command_refuses_bad_input(checkpoint, tmp_path, argv, message):
    os.mkdir(tmp_path / "readonly", mode=0o555)
    if "readonly" in argv[2] and os.access(tmp_path / "readonly", os.W_OK):
        pytest.skip("this user (root) may write into a read-only directory")
    out = tmp_path / "walk.html"
    previous = f'<!DOCTYPE html><head><meta name="generator" content="{GENERATOR}"></head>the previous page'
    out.write_text(previous)  # a page explain wrote before: it may replace that one only
    (tmp_path / "mine.txt").write_text("a user's file")
    argv = [a.format(out=out, dir=tmp_path) for a in argv] + ["--model", checkpoint]
    run = in_process("explain", argv, tmp_path, budget=60)
    assert run.status == 2
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("explain.py: error: ") and message in lines[0], run.err
    assert out.read_text() == previous  # untouched, no half-written page
    assert (tmp_path / "mine.txt").read_text() == "a user's file"
    assert sorted(os.listdir(tmp_path)) == ["mine.txt", "readonly", "walk.html"]


@pytest.mark.parametrize("damage, message", [
    (("vocab.json", '{"a": '), "cannot read GPT-2 BPE files"),
    (("config.json", '{"n_layer": 2,'), "config.json: not valid JSON"),
])
def test_file_errors_are_not_worded_as_flags(checkpoint, tmp_path, damage, message):
    """Only explain_page's own arguments become flags: "cannot read ..." stays a sentence."""
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / damage[0]).write_text(damage[1])
    run = in_process("explain", ["Hi", "--model", broken, "--out", tmp_path / "walk.html"],
                     tmp_path, budget=60)
    assert run.status == 2
    line = run.err.strip()
    assert line.startswith(f"explain.py: error: ") and message in line and "--" not in line, run.err


def test_interrupted_write_leaves_the_previous_page(checkpoint, tmp_path, monkeypatch):
    from numpy_gpt2.cli import explain as cli_explain
    out = tmp_path / "walk.html"
    out.write_text("the previous page")

    def half_then_fail(self, text):  # a disk that fills up in the middle of the page
        raise OSError(28, "No space left on device")
    real_open = open

    def fake_open(path, mode="r", *args, **kw):
        f = real_open(path, mode, *args, **kw)
        if "w" in mode and str(path).endswith("walk.html") and ".save-" in str(path):
            f.write("<!DOCTYPE html><html>half")
            f.close()
            raise OSError(28, "No space left on device")
        return f
    monkeypatch.setattr("builtins.open", fake_open)
    status = cli_explain.main(["Hi", "--model", str(checkpoint), "--out", str(out)])
    monkeypatch.undo()
    assert status == 2
    assert out.read_text() == "the previous page"
    assert sorted(os.listdir(tmp_path)) == ["walk.html"]


# ---- size and speed ------------------------------------------------------------------------------

def prompt_of(encoder, n: int) -> str:
    """A prompt of exactly n GPT-2 tokens (the one benchmarks/bench_explain.py times)."""
    words = ("The quick brown fox jumps over the lazy dog and then it runs far away into the old dark "
             "forest where it sleeps until the morning comes back again to wake it up and send it home").split()
    prompt = next(" ".join(words[:k]) for k in range(len(words) + 1) if len(encoder.encode(" ".join(words[:k]))) >= n)
    assert len(encoder.encode(prompt)) == n
    return prompt


def test_size_and_time_of_a_gpt2_shaped_page(encoder):
    """A 32-token page of a model with GPT-2 124M's width and vocabulary but 2 of its 12
    layers (this shared machine is busy): well under 30 s and 5 MB. The full 124M:
    benchmarks/bench_explain.py, numbers in docs/explain.md."""
    config = numpy_gpt2.GPT2Config(n_layer=2, n_head=12, n_embd=768)
    params = numpy_gpt2.init_params(config, seed=0)
    prompt = prompt_of(encoder, 32)
    start = time.perf_counter()
    text = explain_page(params, config, encoder, prompt, target=" the morning")
    seconds = time.perf_counter() - start
    assert seconds < 30
    assert len(text.encode("utf-8")) < 2e6


# ---- the pictures (matplotlib) and the command that makes docs/learn.md's ------------------------

def test_plots_and_learn_pictures(tmp_path, tokenizer_dir):
    pytest.importorskip("matplotlib")
    import matplotlib.image
    from numpy_gpt2 import plots
    config = numpy_gpt2.GPT2Config(n_layer=2, n_head=3, n_embd=24, n_ctx=40)
    params = numpy_gpt2.init_params(config, seed=2)
    numpy_gpt2.save_checkpoint(tmp_path / "ckpt", params, config, tokenizer_dir)
    with pytest.raises(ValueError, match="cache has no 'h.1.attn.softmax'"):
        plots.attention_patterns({}, ["a"], 1, tmp_path / "x.png")
    cache = numpy_gpt2.activations(params, config, np.array([1, 2, 3]), "h.1.attn.softmax")
    with pytest.raises(ValueError, match="tokens: 2 labels"):
        plots.attention_patterns(cache, ["a", "b"], 1, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    run = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "examples", "learn_pictures.py"),
                          "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    names = ["learn_attention.png", "learn_attention_last.png", "learn_logit_lens.png", "sample_walk.html"]
    assert sorted(os.listdir(tmp_path / "out")) == names
    for name in names[:3]:
        pixels = matplotlib.image.imread(tmp_path / "out" / name)
        assert pixels.shape[0] > 200 and pixels.std() > 0.05
    assert "Tiny Shakespeare" in (tmp_path / "out" / "sample_walk.html").read_text(encoding="utf-8")
