"""scripts/generate.py: --prompts-file, --json, the processor flags, --num-beams, --logprobs,
--context, as a subprocess on a small checkpoint with GPT-2's real vocabulary.

Oracles: numpy_gpt2.generate / beam_search called directly (themselves tested against
transformers), and transformers' greedy generate for the processor flags.
"""

import json

import numpy as np
import pytest
import torch

import numpy_gpt2
from helpers.checkpoints import reference_model
from helpers.generation_checkpoint import write_generation_checkpoint
from helpers.generate_cli import EOS, run_cli

N_CTX = 64
PROMPTS = ["Hello world", "The cat sat on the mat and", "Once", "<|endoftext|>A"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tokenizer_dir):
    directory = tmp_path_factory.mktemp("cli-batch") / "gpt2-tiny"
    write_generation_checkpoint(directory, n_ctx=N_CTX, vocab_size=50257, n_embd=64, tokenizer_dir=tokenizer_dir)
    return directory


@pytest.fixture(scope="module")
def model(ckpt):
    return numpy_gpt2.load(ckpt, np.float64)


@pytest.fixture(scope="module")
def enc(tokenizer_dir):
    return numpy_gpt2.load_tokenizer(tokenizer_dir)


def encode(enc, text):
    return enc.encode(text, allowed_special={"<|endoftext|>"})


def json_lines(out):
    return [json.loads(line) for line in out.splitlines()]


def test_prompts_file_runs_as_one_batch_each_prompt_as_if_alone(ckpt, model, enc, tmp_path):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS[:3]) + "\n\n" + PROMPTS[3] + "\n")
    code, out, err = run_cli("--prompts-file", "prompts.txt", "--model", ckpt, "--temperature", 0,
                             "--max-new-tokens", 12, "--dtype", "float64", cwd=tmp_path)
    assert code == 0, err
    expected = ""
    for i, prompt in enumerate(PROMPTS):
        alone = list(numpy_gpt2.generate(*model, encode(enc, prompt), 12, temperature=0))
        alone = alone[:alone.index(EOS)] if EOS in alone else alone
        expected += f"==== prompt {i + 1} ====\n{prompt}{enc.decode(alone)}\n"
    assert out == expected
    # JSONL input, JSON output: the same tokens
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps(p if i % 2 else {"prompt": p})
                                                      for i, p in enumerate(PROMPTS)) + "\n")
    code, out2, err = run_cli("--prompts-file", "prompts.jsonl", "--model", ckpt, "--temperature", 0,
                              "--max-new-tokens", 12, "--dtype", "float64", "--json", cwd=tmp_path)
    assert code == 0, err
    items = json_lines(out2)
    assert [(i["prompt_index"], i["prompt"]) for i in items] == list(enumerate(PROMPTS))
    assert "".join(f"==== prompt {i['prompt_index'] + 1} ====\n{i['prompt']}{i['text']}\n" for i in items) == out
    assert all(i["finish_reason"] in ("eos", "length") for i in items)


def test_json_logprobs_are_generates(ckpt, model, enc, tmp_path):
    code, out, err = run_cli("Hello", "--model", ckpt, "--temperature", 0.8, "--seed", 3, "--num-samples", 2,
                             "--max-new-tokens", 6, "--dtype", "float64", "--logprobs", 3, cwd=tmp_path)
    assert code == 0, err
    items = json_lines(out)
    steps = list(numpy_gpt2.generate(*model, encode(enc, "Hello"), 6, temperature=0.8, seed=3, num_samples=2,
                                     logprobs=3))
    for item in items:
        s = item["sample"]
        n = len(item["tokens"])
        assert item["tokens"] == [int(t[s]) for t, _ in steps][:n]
        for k, entry in enumerate(item["logprobs"]):
            info = steps[k][1]
            assert entry["token"] == item["tokens"][k]
            assert entry["logprob"] == pytest.approx(info["logprob"][s], abs=1e-12)
            assert entry["processed_logprob"] == pytest.approx(info["processed_logprob"][s], abs=1e-12)
            assert [t["id"] for t in entry["top"]] == info["top_ids"][s].tolist()


def test_beams_are_beam_searchs(ckpt, model, enc, tmp_path):
    code, out, err = run_cli("The cat", "--model", ckpt, "--num-beams", 4, "--num-samples", 2, "--max-new-tokens", 8,
                             "--length-penalty", 1.5, "--early-stopping", "never", "--no-repeat-ngram-size", 2,
                             "--dtype", "float64", cwd=tmp_path)
    assert code == 0, err
    beams = numpy_gpt2.beam_search(*model, encode(enc, "The cat"), 8, 4, length_penalty=1.5, early_stopping="never",
                                   num_return_sequences=2, no_repeat_ngram_size=2)
    expected = "".join(f"==== beam {b + 1} (score {s:.4f}) ====\nThe cat{enc.decode([t for t in tokens if t != EOS])}\n"
                       for b, (tokens, s) in enumerate(beams))
    assert out == expected


def test_processor_flags_equal_transformers_greedy(ckpt, enc, tmp_path):
    code, out, err = run_cli("The cat sat", "--model", ckpt, "--temperature", 0, "--max-new-tokens", 20,
                             "--repetition-penalty", 1.5, "--no-repeat-ngram-size", 2, "--min-new-tokens", 3,
                             "--logit-bias", "262:-inf", "--logit-bias", "11:2.5", "--suppress-tokens", "13,198",
                             "--dtype", "float64", "--json", cwd=tmp_path)
    assert code == 0, err
    ids = encode(enc, "The cat sat")
    ref = reference_model(ckpt, torch.float64)
    with torch.no_grad():
        theirs = ref.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                              do_sample=False, max_new_tokens=20, eos_token_id=EOS, pad_token_id=EOS,
                              repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=3,
                              sequence_bias={(262,): -float("inf"), (11,): 2.5}, suppress_tokens=[13, 198])
    theirs = theirs[0, len(ids):].tolist()
    theirs = theirs[:theirs.index(EOS)] if EOS in theirs else theirs
    (item,) = json_lines(out)
    assert item["tokens"] == theirs


def test_context_slide_goes_past_n_ctx(ckpt, model, enc, tmp_path):
    code, out, err = run_cli("Hello", "--model", ckpt, "--temperature", 0, "--max-new-tokens", 80, "--context", "slide",
                             "--dtype", "float64", "--json", "--suppress-tokens", str(EOS), cwd=tmp_path)
    assert code == 0, err
    (item,) = json_lines(out)
    expected = list(numpy_gpt2.generate(*model, encode(enc, "Hello"), 80, temperature=0, context="slide",
                                        suppress_tokens=[EOS]))
    assert item["tokens"] == expected and len(expected) == 80 and item["finish_reason"] == "length"


@pytest.mark.parametrize("args, message", [
    (["--repetition-penalty", "0"], "--repetition-penalty must be a finite number > 0"),
    (["--frequency-penalty", "inf"], "--frequency-penalty must be a finite number"),
    (["--presence-penalty", "x"], "argument --presence-penalty: invalid float value: 'x'"),
    (["--no-repeat-ngram-size", "-1"], "--no-repeat-ngram-size must be an integer >= 0"),
    (["--min-new-tokens", "-2"], "--min-new-tokens must be an integer >= 0"),
    (["--min-p", "2"], "--min-p must be in [0, 1]"),
    (["--typical-p", "0"], "--typical-p must be in (0, 1]"),
    (["--logit-bias", "5"], "argument --logit-bias: expected TOKEN_ID:BIAS"),
    (["--logit-bias", "50257:1"], "--logit-bias: token id 50257 is not an integer in [0, 50257)"),
    (["--logit-bias", "5:inf"], "--logit-bias[5] must be a finite number or -inf"),
    (["--suppress-tokens", "1,a"], "argument --suppress-tokens: expected token ids separated by commas"),
    (["--suppress-tokens=-1"], "--suppress-tokens: token id -1 is not in [0, 50257)"),
    (["--suppress-tokens", "5,50257"], "--suppress-tokens: token id 50257 is not in [0, 50257)"),
    (["--suppress-tokens", "99999999999999999999999"], "--suppress-tokens: token id 99999999999999999999999 is not"),
    (["--logit-bias=-1:1"], "--logit-bias: token id -1 is not an integer >= 0"),
    (["--length-penalty", "1e308", "--num-beams", "2"], "--length-penalty must be at most"),
    (["--num-beams", "0"], "--num-beams must be an integer >= 1"),
    (["--num-beams", "2", "--num-samples", "3"], "--num-samples must be an integer from 1 to --num-beams (2), got 3"),
    (["--num-beams", "2", "--top-k", "5"], "--top-k does not apply to beam search"),
    (["--num-beams", "2", "--repetition-penalty", "1.2"], "--repetition-penalty does not apply to beam search"),
    (["--early-stopping", "maybe"], "argument --early-stopping: expected true, false or never"),
    (["--length-penalty", "nan", "--num-beams", "2"], "--length-penalty must be a finite number"),
    (["--logprobs", "-1"], "--logprobs must be an integer in 0..50257"),
    (["--context", "wrap"], "argument --context: invalid choice: 'wrap'"),
    (["--prompts-file", "{tmp}/none.txt"], "--prompts-file {tmp}/none.txt: cannot read it"),
    (["--prompts-file", "{tmp}/empty.txt"], "--prompts-file {tmp}/empty.txt holds no prompts"),
    (["--prompts-file", "{tmp}/bad.jsonl"], "--prompts-file {tmp}/bad.jsonl line 2: expected a JSON string"),
    (["--prompts-file", "{tmp}/long.txt"], "prompt 2: 70 tokens is longer than the context (n_ctx=64"),
])
def test_bad_new_flags_exit_2_with_one_line(ckpt, tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "bad.jsonl").write_text('"ok"\n{"text": "no prompt key"}\n')
    (tmp_path / "long.txt").write_text("short\n" + " x" * 70 + "\n")
    args = [a.format(tmp=tmp_path) for a in args]
    prompt = [] if "--prompts-file" in args else ["Hello"]
    code, out, err = run_cli(*prompt, *args, "--model", ckpt, cwd=tmp_path)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("generate.py: error: "), err
    assert message.format(tmp=tmp_path) in err, err
