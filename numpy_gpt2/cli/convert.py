"""Convert a GPT-2 checkpoint to a Hugging Face directory or an llm.c model file.

    python scripts/convert.py SOURCE OUT --to hf|llmc [--dtype float32|float16|bfloat16]
                              [--tokenizer DIR] [--vocab-size N]

SOURCE: anything numpy_gpt2.load reads (a directory or file: safetensors, sharded,
pytorch_model.bin, nanoGPT ckpt.pt, llm.c .bin, OpenAI's TensorFlow release) or a hub
name. --to hf writes the directory OUT: model.safetensors (--dtype, default float32),
config.json (with the source's config: a nanoGPT model says activation_function "gelu"),
vocab.json and merges.txt (from --tokenizer DIR, else beside SOURCE, also from OpenAI's
encoder.json and vocab.bpe; left out, with a note, when there are none and the
vocabulary is not GPT-2's). transformers' GPT2LMHeadModel.from_pretrained(OUT) loads it.
--to llmc writes the file OUT in llm.c's format: version 3 (float32) or, with --dtype
bfloat16, version 5; --vocab-size gives the real vocabulary when the model's rows are padded
(50257 for GPT-2 with 50304 rows); llm.c computes GPT-2's own function only, so a model
with another GELU (nanoGPT's exact erf GELU), epsilon, attention scaling or MLP width is
refused (convert it --to hf); a model without biases (nanoGPT's bias=False) is written
with zero biases, since llm.c's format has no such flag (the same function, but llm.c trains
them; a note says so). Files are written under temporary names and renamed into
place only when all are complete. A progress bar (bytes written) goes to stderr. Exit
status: 0 done, 2 bad arguments or input with a one-line message.
"""

from __future__ import annotations

from numpy_gpt2.cli import common
from numpy_gpt2.cli.common import UsageError

import json
import os
import shutil
import sys

import numpy_gpt2
from tqdm import tqdm

from numpy_gpt2.io.atomic import write_files_atomically
from numpy_gpt2.io.checkpoint import hf_config_dict
from numpy_gpt2.io.formats.llmc import HF_INSTEAD, MAGIC as LLMC_MAGIC, check_llmc_config, check_llmc_vocab, padded_vocab, write_llmc
from numpy_gpt2.io.outputs import output_directory, output_file, safetensors_metadata
from numpy_gpt2.io.formats.safetensors import write_safetensors
from numpy_gpt2.params import flatten_params
from numpy_gpt2.io.tokenizer import TOKENIZER_ENV, TOKENIZER_FILES, tokenizer_dir, tokenizer_paths
from numpy_gpt2.training.state import STATE_FILE

DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
GPT2_VOCAB = 50257


def tokenizer_files(args, source_path, config) -> dict:
    """{file name: path} of vocab.json and merges.txt to copy ({} when there are none and the
    vocabulary is not GPT-2's). ValueError when --tokenizer lacks them, or a GPT-2-sized
    vocabulary has none anywhere."""
    if args.tokenizer:
        found = {n: os.path.join(args.tokenizer, n) for n in TOKENIZER_FILES}
        missing = [n for n, p in found.items() if not os.path.isfile(p)]
        if missing and tokenizer_paths(args.tokenizer) is None:
            raise ValueError(f"{args.tokenizer}: no {' or '.join(missing)} (--tokenizer)")
        return tokenizer_paths(args.tokenizer)
    here = source_path if os.path.isdir(source_path) else os.path.dirname(source_path) or "."
    found = tokenizer_paths(here)  # also OpenAI's encoder.json + vocab.bpe, written as HF's names
    if found is not None:
        return found
    if config.vocab_size >= GPT2_VOCAB:
        try:  # $NUMPY_GPT2_TOKENIZER, as generate.py and train.py use it
            where = tokenizer_dir()
        except FileNotFoundError as e:
            raise ValueError(str(e)) from None
        if where is not None:
            return tokenizer_paths(where)
        raise ValueError(f"{source_path}: no vocab.json and merges.txt beside the weights; pass "
                         f"--tokenizer DIR (a directory holding GPT-2's tokenizer files) or set "
                         f"{TOKENIZER_ENV}")
    return {}


def hf_writers(params, config, dtype, tokenizer, bar) -> dict:
    """{file name: writer(path)} of a Hugging Face checkpoint directory."""
    flat = flatten_params(params)
    config_dict = hf_config_dict(config)
    config_dict["torch_dtype"] = dtype

    def write_config(path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config_dict, f, indent=2)
            f.write("\n")

    writers = {"model.safetensors": lambda path: write_safetensors(
                   path, flat, DTYPES[dtype], {"format": "pt", **MARK}, progress=lambda n: bar(n)),
               "config.json": write_config}
    for name, src in tokenizer.items():
        writers[name] = lambda path, src=src: shutil.copyfile(src, path)
    return writers


MARK = {"written_by": "numpy_gpt2 convert"}  # model.safetensors' metadata: convert's own output


def converted_here(directory) -> bool:
    """directory's model.safetensors was written by convert (its files may be replaced)."""
    metadata = safetensors_metadata(os.path.join(directory, "model.safetensors"))
    return metadata.get("written_by") == MARK["written_by"]


def is_llmc(path) -> bool:
    """path holds an llm.c model file (its magic number): convert --to llmc may replace it."""
    try:
        with open(path, "rb") as f:
            return int.from_bytes(f.read(4), "little") == LLMC_MAGIC
    except OSError:
        return False


def check_not_overwriting(source_path, out, to) -> None:
    """ValueError when writing `out` would destroy what it is made from or a training run: the
    source checkpoint's own directory (--to hf) or an existing file beside the source (--to
    llmc), or a run directory or a directory inside one such as its best/ (train_state.json:
    a run's files may only change together, by one atomic save)."""
    src = os.path.realpath(source_path)
    src_dir = src if os.path.isdir(src) else os.path.dirname(src)
    target = os.path.realpath(out)
    target_dir = target if to == "hf" else os.path.dirname(target)
    if target_dir == src_dir and (to == "hf" or os.path.exists(target)):
        raise ValueError(f"{out}: would overwrite the checkpoint being converted ({source_path}); "
                         f"write the output elsewhere")
    run = target_dir  # the run's own directory or any below it (best/ is part of the run)
    while not os.path.isfile(os.path.join(run, STATE_FILE)):
        if os.path.dirname(run) == run:
            return
        run = os.path.dirname(run)
    raise ValueError(f"{out}: is in a training run's directory ({run} holds {STATE_FILE}, "
                     f"whose files change only together, by train.py's saves); write it elsewhere")


@common.entry("convert")
def main(argv=None) -> int:
    parser = common.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="checkpoint: directory, weights file or hub name")
    parser.add_argument("out", help="output: a directory (--to hf) or a file (--to llmc)")
    parser.add_argument("--to", choices=["hf", "llmc"], required=True, help="output format")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32",
                        help="stored dtype (default float32; llm.c: float32 or bfloat16)")
    parser.add_argument("--tokenizer", help="directory with vocab.json and merges.txt (--to hf; "
                        "default: the ones beside SOURCE)")
    parser.add_argument("--vocab-size", type=int, help="llm.c header's vocab_size when the "
                        "model's rows are padded (default: the model's rows)")
    args = parser.parse_args(argv)
    if args.to == "llmc" and args.dtype == "float16":
        parser.error("llm.c files hold float32 (version 3) or bfloat16 (version 5), not float16")
    if args.to == "hf" and args.vocab_size is not None:
        parser.error("--vocab-size is for --to llmc")
    if args.to == "llmc" and args.tokenizer is not None:
        parser.error("--tokenizer is for --to hf (an llm.c model file holds no tokenizer)")
    try:
        source_path = common.resolve_model(args.source, flag="")
        check_not_overwriting(source_path, args.out, args.to)
        if args.to == "hf":
            out = output_directory(args.out, ["model.safetensors", "config.json", *TOKENIZER_FILES],
                                   ours=converted_here)
        else:
            out = output_file(args.out, ours=is_llmc)
        params, config = numpy_gpt2.load(source_path)
        if args.to == "hf":
            total = sum(a.size for a in flatten_params(params).values())
            tokenizer = tokenizer_files(args, source_path, config)
            out_dir, writers = out, None
        else:
            try:
                check_llmc_config(config)  # before any file exists
            except ValueError as e:
                raise UsageError(str(e).replace(HF_INSTEAD, "convert it --to hf instead")) from None
            total = padded_vocab(config.vocab_size) * config.n_embd + sum(
                a.size for k, a in flatten_params(params).items() if k != "wte.weight")
        nbytes = total * (4 if args.dtype == "float32" else 2)
        bars = []  # drawn from the first bytes written on: an error before leaves no bar

        def advance(done):
            if not bars:
                bars.append(tqdm(total=nbytes, unit="B", unit_scale=True, file=sys.stderr,
                                 leave=False, desc=f"writing {args.to}"))
            bars[0].update(done - bars[0].n)

        if args.to == "hf":
            writers = hf_writers(params, config, args.dtype, tokenizer, advance)
        else:
            if args.vocab_size is not None:  # before any file exists
                try:
                    check_llmc_vocab(params, config, args.vocab_size)
                except ValueError as e:
                    raise UsageError(common.flag_message(e)) from None
            out_dir = os.path.dirname(out)
            writers = {os.path.basename(out): lambda path: write_llmc(
                path, params, config, args.vocab_size, DTYPES[args.dtype], progress=advance)}
        try:
            write_files_atomically(out_dir, writers, on_commit=lambda: common.written(args.out))
        finally:
            for bar in bars:  # erased (leave=False): the error, if any, is the only line left
                bar.close()
    except (ValueError, OSError, RuntimeError) as e:  # CheckpointError is a ValueError
        raise common.input_error(e) from None
    n_params = sum(a.size for a in flatten_params(params).values())
    print(f"wrote {args.out} ({args.to}, {args.dtype}, {n_params:,} parameters, "
          f"{nbytes / 1e6:,.1f} MB of weights)")
    if args.to == "llmc" and not config.bias:
        print("note: the model has no biases (bias=False); llm.c's format has no such flag, so "
              "the file holds zero biases: the same function, but llm.c (and numpy_gpt2, "
              "loading the file) treat them as ordinary biases that training changes")
    return 0
