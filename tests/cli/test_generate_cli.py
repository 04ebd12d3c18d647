"""scripts/generate.py end to end, as a subprocess, on a checkpoint directory built here.

The checkpoint: GPT-2's real vocabulary size (50257) and tokenizer files, random weights, small
otherwise (2 layers, n_embd 64, n_ctx 64). Oracle: transformers' greedy generate on the same
file, decoded with the same tokenizer. Runs with the repository NOT on sys.path (cwd elsewhere,
no PYTHONPATH), as a user running the script from a checkout would, and offline.
"""

import os
import re
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tiktoken
import torch

import numpy_gpt2
from helpers.checkpoints import reference_model
from helpers.generation_checkpoint import write_generation_checkpoint
from helpers.generate_cli import EOS, SCRIPT, run_cli

N_CTX = 64
PROMPT = "Hello world, ü 🤗"  # 🤗 is three tokens: the stream must not split it


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tokenizer_dir):
    directory = tmp_path_factory.mktemp("cli") / "gpt2-tiny"
    write_generation_checkpoint(directory, n_ctx=N_CTX, vocab_size=50257, n_embd=64,
                                tokenizer_dir=tokenizer_dir)
    return directory


@pytest.fixture(scope="module")
def enc(tokenizer_dir):
    return numpy_gpt2.load_tokenizer(tokenizer_dir)


def hf_greedy_ids(ckpt, prompt_ids, max_new_tokens, dtype=torch.float64):
    """transformers' greedy continuation, stopping at <|endoftext|> (not included)."""
    ref = reference_model(ckpt, dtype)
    with torch.no_grad():
        out = ref.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones((1, len(prompt_ids)), dtype=torch.long),
                           do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=EOS,
                           pad_token_id=EOS)
    new = out[0, len(prompt_ids):].tolist()
    return new[:new.index(EOS)] if EOS in new else new


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_greedy_stdout_is_prompt_plus_transformers_greedy_text(ckpt, enc, tmp_path, dtype):
    code, out, err = run_cli(PROMPT, "--model", ckpt, "--temperature", 0, "--max-new-tokens", 40,
                             "--dtype", dtype, cwd=tmp_path)
    assert code == 0, err
    ids = hf_greedy_ids(ckpt, enc.encode(PROMPT), 40, getattr(torch, dtype))
    assert len(ids) >= 20 and len(set(ids)) >= 5  # a real continuation, not one repeated token
    assert out == PROMPT + enc.decode(ids) + "\n"
    assert "\ufffd" not in out
    for what in (f"{dtype};", "loaded", "prompt: ", "tokens/s", "generated: "):
        assert what in err


def test_prompt_from_stdin_loses_one_trailing_newline(ckpt, tmp_path):
    args = ("--model", ckpt, "--temperature", 0, "--max-new-tokens", 8)
    from_arg = run_cli("Once upon a time", *args, cwd=tmp_path)
    from_stdin = run_cli(*args, stdin="Once upon a time\n", cwd=tmp_path)
    assert from_arg[0] == from_stdin[0] == 0
    assert from_stdin[1] == from_arg[1]
    assert from_arg[1].startswith("Once upon a time")


def test_empty_prompt_starts_from_endoftext(ckpt, enc, tmp_path):
    code, out, err = run_cli("", "--model", ckpt, "--temperature", 0, "--max-new-tokens", 10, cwd=tmp_path)
    assert code == 0, err
    assert out == enc.decode(hf_greedy_ids(ckpt, [EOS], 10, torch.float32)) + "\n"


def test_several_samples_are_separated_and_seeded(ckpt, enc, tmp_path):
    args = ("The", "--model", ckpt, "--max-new-tokens", 12, "--num-samples", 3, "--top-k", 50)
    code, out, err = run_cli(*args, "--seed", 1, cwd=tmp_path)
    assert code == 0, err
    blocks = out.split("==== sample ")
    assert blocks[0] == "" and [b.split(" ====\n")[0] for b in blocks[1:]] == ["1", "2", "3"]
    texts = [b.split(" ====\n", 1)[1] for b in blocks[1:]]
    assert all(t.startswith("The") and t.endswith("\n") for t in texts)
    assert len(set(texts)) == 3
    assert run_cli(*args, "--seed", 1, cwd=tmp_path)[1] == out  # same seed, same text
    assert run_cli(*args, "--seed", 2, cwd=tmp_path)[1] != out


def test_full_context_stops_cleanly_with_a_note(ckpt, enc, tmp_path):
    prompt = " x" * (N_CTX - 4)
    assert len(enc.encode(prompt)) == N_CTX - 4  # room for 5 new tokens: see numpy_gpt2.generate
    code, out, err = run_cli(prompt, "--model", ckpt, "--max-new-tokens", 50, "--temperature", 0,
                             cwd=tmp_path)
    assert code == 0, err
    ids = hf_greedy_ids(ckpt, enc.encode(prompt), 5)
    assert len(ids) == 5  # no <|endoftext|> among them
    assert out == prompt + enc.decode(ids) + "\n"
    assert "generated: 5 tokens" in err and "the context is full (n_ctx=64)" in err


def test_hub_name_uses_a_cached_snapshot_offline(ckpt, enc, tmp_path):
    """--model gpt2 with HF_HUB_OFFLINE=1: the standard cache's snapshot is used, no network."""
    snapshot = tmp_path / "hf-home" / "hub" / "models--openai-community--gpt2" / "snapshots" / ("ab" * 20)
    snapshot.mkdir(parents=True)
    for name in ("model.safetensors", "config.json", "vocab.json", "merges.txt"):
        os.symlink(ckpt / name, snapshot / name)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("ab" * 20)
    code, out, err = run_cli(PROMPT, "--temperature", 0, "--max-new-tokens", 10, cwd=tmp_path)
    assert code == 0, err
    assert str(snapshot) in err
    assert out == PROMPT + enc.decode(hf_greedy_ids(ckpt, enc.encode(PROMPT), 10)) + "\n"


def test_tokenizer_from_env_var_when_the_checkpoint_has_none(ckpt, enc, tokenizer_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.safetensors", "config.json"):
        os.symlink(ckpt / name, bare / name)
    args = (PROMPT, "--model", bare, "--temperature", 0, "--max-new-tokens", 10)
    code, out, err = run_cli(*args, cwd=tmp_path, extra_env={"NUMPY_GPT2_TOKENIZER": tokenizer_dir})
    assert code == 0, err
    assert f"tokenizer {tokenizer_dir}" in err
    assert out == PROMPT + enc.decode(hf_greedy_ids(ckpt, enc.encode(PROMPT), 10)) + "\n"


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
    (["--temperature", "nan"], "--temperature must be a finite number >= 0"),
    (["--temperature", "abc"], "argument --temperature: invalid float value: 'abc'"),
    (["--top-k", "0"], "--top-k must be an integer >= 1 (leave it out for no limit), got 0"),
    (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--max-new-tokens", "-3"], "--max-new-tokens must be an integer >= 0"),
    (["--num-samples", "0"], "--num-samples must be an integer >= 1"),
    (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--model", "{tmp}/missing"], "{tmp}/missing: no such file or directory"),
    (["--model", "{tmp}"], "{tmp}: directory has no model.safetensors"),
    (["--model", "gpt2-xl"], "tried Hugging Face hub repo openai-community/gpt2-xl"),
    (["--prompt-of", str(N_CTX + 1)], "prompt tokens: sequence of 65 positions is longer than the context (n_ctx=64)"),
])
def test_bad_input_exits_2_with_one_line(ckpt, tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    if "--model" not in args:
        args += ["--model", str(ckpt)]
    prompt = "Hello"
    if args[0] == "--prompt-of":
        prompt, args = " word" * int(args[1]), args[2:]
    code, out, err = run_cli(prompt, *args, cwd=tmp_path)
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("generate.py: error: "), err
    assert message.format(tmp=tmp_path) in err
    # Messages name the flags the user typed, never the Python parameter names.
    assert not re.search(r"(?<![-\w])(temperature|top_k|top_p|max_new_tokens|num_samples) must", err), err
    if "hub repo" in message:
        assert "HF_HUB_OFFLINE=1" in err and "--model PATH" in err


def test_tokens_reach_the_pipe_while_generation_is_still_running(tokenizer_dir, enc, tmp_path):
    """Streaming: the first new text is readable from the stdout pipe before generation ends.

    A model with a 1024-token context and --max-new-tokens 1000: as soon as the first bytes
    after the prompt arrive, the process is frozen (SIGSTOP) and must still be running, with
    the end-of-run report ("generated: ...", written after the last token) not yet on stderr.
    A script that wrote its text at the end (block-buffered stdout) would deliver nothing
    until after that report. Not timing-sensitive: the process would have to run ~1000
    decoding steps between writing its first token and being frozen to fail spuriously.
    """
    ckpt = tmp_path / "long-context"
    write_generation_checkpoint(ckpt, n_ctx=1024, vocab_size=50257, n_embd=64, tokenizer_dir=tokenizer_dir)
    params, config = numpy_gpt2.load(ckpt)
    prompt = "Streaming test"
    first = list(numpy_gpt2.generate(params, config, enc.encode(prompt), 100, temperature=0))
    assert EOS not in first  # the run below does not stop early at <|endoftext|>
    # Without PYTHONUNBUFFERED, a pipe gets a block-buffered stdout: the script must flush.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "NUMPY_GPT2_TOKENIZER", "PYTHONUNBUFFERED")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    proc = subprocess.Popen([sys.executable, SCRIPT, prompt, "--model", str(ckpt), "--temperature", "0",
                             "--max-new-tokens", "1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=tmp_path, env=env)
    try:
        out, deadline = b"", time.monotonic() + 120
        while len(out) <= len(prompt.encode()):  # the prompt comes first, then the new text
            ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))
            assert ready, f"no new text within 120 s; got {out!r}"
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"stdout closed before any new text: {out!r}"
            out += chunk
        proc.send_signal(signal.SIGSTOP)
        assert proc.poll() is None, "the process had already finished"
        os.set_blocking(proc.stderr.fileno(), False)
        err = (proc.stderr.read() or b"").decode()
        assert "loaded " in err and "generated:" not in err, err
        assert out.decode("utf-8", "ignore").startswith(prompt)
        assert enc.decode(first).startswith(out.decode("utf-8", "ignore")[len(prompt):].rstrip("\ufffd"))
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()
