"""Tokenize text files into uint16 token files for `numpy-gpt2 train --data DIR` (nanoGPT's format).

    numpy-gpt2 prepare corpus/ more.txt --out data/mycorpus
    numpy-gpt2 train --data data/mycorpus --out out-mycorpus

Every INPUT is a UTF-8 text file or a directory (its files, recursively, in sorted order;
names starting with "." are skipped). A document is one input file, split further wherever
it contains the literal text "<|endoftext|>"; empty documents are dropped. Each document's
tokens are exactly encode_ordinary of its text (GPT-2's BPE; no stripping or normalising),
followed by the separator token <|endoftext|> (50256), as in nanoGPT's
data/openwebtext/prepare.py. Each document goes to the validation split with probability
--val-fraction, drawn from a generator seeded with --seed, so the same inputs always give
the same files; a split left without documents gets the last one. A single document (one
file, e.g. Tiny Shakespeare) is cut by characters instead, as train --data FILE.txt and
nanoGPT's data/shakespeare/prepare.py do: the first 90% train, the rest validate.

Writes DIR/train.bin and DIR/val.bin (headerless little-endian uint16, nanoGPT's format) and
DIR/meta.json (token and document counts, the settings). The inputs are read in pieces and
tokenized in parallel (--workers threads; tiktoken releases the GIL), so memory stays small
whatever their size; a progress bar on stderr counts the bytes read. Files are written under
temporary names and renamed at the end: an interrupted run leaves no partial train.bin.
Bad input exits with status 2 and a one-line message.
"""

from __future__ import annotations

from numpy_gpt2.cli import common

import argparse
import codecs
import collections
import json
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy_gpt2
from numpy_gpt2.cli.common import UsageError
from numpy_gpt2.errors import not_utf8_text
from numpy_gpt2.fast.threads import thread_count
from numpy_gpt2.io.atomic import make_directories, remove_directories
from numpy_gpt2.io.inputs import check_text_input, is_pipe
from numpy_gpt2.io.outputs import check_outside_inputs, output_directory
from numpy_gpt2.training.data import write_token_splits
from numpy_gpt2.io.tokenizer import ENDOFTEXT

READ_BYTES = 1 << 20  # bytes read from a file at a time
PIECE_CHARS = 1 << 20  # a document longer than this is tokenized in pieces
META_FILE = "meta.json"
PREPARED_FILES = ("train.bin", "val.bin", META_FILE)  # what prepare writes in --out
FORMAT = "nanoGPT: headerless little-endian uint16 GPT-2 token ids"  # meta.json's "format"
# Where a long document may be cut without changing its tokens: after a newline that follows
# a non-space character, before an ASCII letter. GPT-2's pre-tokenizer always ends a chunk
# there (the newline is a chunk of its own, the letter starts a new word), and BPE never
# merges across chunks, so the pieces' tokens concatenated equal the whole text's.
SAFE_CUT = re.compile(r"(?<=\S\n)(?=[A-Za-z])")


def parse_args(argv):
    p = common.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="UTF-8 text files or directories")
    p.add_argument("--out", required=True, help="output directory for train.bin, val.bin, meta.json")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="probability that a document goes to val.bin (default: 0.1)")
    p.add_argument("--seed", type=int, default=2357, help="seed of the document split (default: 2357)")
    p.add_argument("--workers", type=int, default=thread_count(),
                   help="tokenizer threads (default: the CPUs this process may use)")
    args = p.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        raise UsageError(f"--val-fraction {args.val_fraction}: expected a number in (0, 1)")
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: expected an integer >= 1")
    if args.seed < 0:  # numpy's generators take seeds >= 0
        raise UsageError(f"--seed {args.seed}: expected an integer >= 0")
    return args


def list_files(inputs) -> list[str]:
    """The files to read, in order: each input file, and each directory's files (recursively,
    sorted, hidden names skipped, and a prepared directory's own train.bin, val.bin and
    meta.json skipped). UsageError for a missing input, an empty path, a device, socket or
    pipe (prepare may read an input twice: numpy_gpt2.io.inputs), or no files at all."""
    files = []
    for item in inputs:
        if os.path.isdir(item):
            for root, dirs, names in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                own = set(PREPARED_FILES) if prepared_here(root) else set()
                for name in sorted(names):
                    if not name.startswith(".") and name not in own:
                        files.append(check_input(os.path.join(root, name)))
        elif os.path.lexists(item) or not item:
            files.append(check_input(item))
        else:
            raise UsageError(f"{item}: no such file or directory")
    if not files:
        raise UsageError(f"no files in {' '.join(inputs)}")
    return files


def check_input(path) -> str:
    """path, unless it cannot be a text input of prepare (UsageError naming it)."""
    try:
        check_text_input(path)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if is_pipe(path):
        raise UsageError(f"{path}: is a pipe (FIFO); prepare may read an input twice (a single "
                         f"document is split in a second pass): save it to a file first")
    return path


def read_text(path):
    """Yield (text, bytes read) pieces of a UTF-8 file. UsageError naming the file and byte
    offset at the first invalid byte."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with open(path, "rb") as f:
            while True:
                raw = f.read(READ_BYTES)
                held = len(decoder.getstate()[0])  # bytes of a character begun in the last read
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as e:
                    raise UsageError(f"{path}: {not_utf8_text(e, offset - held)}") from None
                offset += len(raw)
                yield text, len(raw)
                if not raw:
                    return
    except OSError as e:
        raise common.input_error(e, None if e.filename else str(path),
                                 f"{path}: cannot read ({e.strerror})") from None


def pieces(files, progress):
    """Yield (text, document ends here) in input order: documents are files split at
    "<|endoftext|>"; a long document comes in pieces cut at SAFE_CUT points."""
    keep = len(ENDOFTEXT) - 1  # a separator may straddle two reads
    for path in files:
        buffer = ""
        for text, n_bytes in read_text(path):
            progress(n_bytes)
            buffer += text
            *documents, buffer = buffer.split(ENDOFTEXT)
            for document in documents:
                yield document, True
            if len(buffer) > PIECE_CHARS + keep:
                cuts = [m.start() for m in SAFE_CUT.finditer(buffer, 0, len(buffer) - keep)]
                if cuts and cuts[-1] > 0:
                    yield buffer[:cuts[-1]], False
                    buffer = buffer[cuts[-1]:]
        yield buffer, True


def tokenize(files, tokenizer, workers: int, progress):
    """Yield (text, tokens, document ends here) for every piece, tokenized in parallel
    threads, in order; at most 4 * workers pieces in flight (memory stays bounded)."""
    with ThreadPoolExecutor(workers) as pool:
        pending = collections.deque()
        for text, ends in pieces(files, progress):
            pending.append((text, pool.submit(tokenizer.encode_ordinary, text), ends))
            if len(pending) >= 4 * workers:
                text, future, done = pending.popleft()
                yield text, future.result(), done
        while pending:
            text, future, done = pending.popleft()
            yield text, future.result(), done


def prepare(args, files, tokenizer, progress) -> dict:
    """Write train.bin / val.bin of files (numpy_gpt2.training.data.write_token_splits: the
    split rules), then meta.json, and return meta.json's contents."""
    meta_path = os.path.join(args.out, META_FILE)
    temp = os.path.join(args.out, f".{META_FILE}.tmp-{os.getpid()}")

    def write_meta(meta):  # under a temporary name, renamed: meta.json is whole or absent
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
        os.replace(temp, meta_path)

    marked = False  # this run wrote the provisional meta.json (removed again if it fails)
    try:
        if not os.path.exists(meta_path):  # first: the directory is prepare's own from now on
            write_meta({"format": FORMAT})
            marked = True
        try:
            counts = write_token_splits(
                args.out, tokenize(files, tokenizer, args.workers, progress),
                lambda: tokenize(files, tokenizer, args.workers, lambda n: None),
                args.val_fraction, args.seed, tokenizer.eot_token, tokenizer.encode_ordinary)
        except ValueError as e:
            raise UsageError(str(e)) from None
        meta = {"format": FORMAT, "separator": {"text": ENDOFTEXT, "id": int(tokenizer.eot_token)},
                "vocab_size": int(tokenizer.n_vocab), **counts, "val_fraction": args.val_fraction,
                "seed": args.seed, "inputs": [os.path.abspath(i) for i in args.inputs]}
        write_meta(meta)
        marked = False
        common.written(args.out)
    except OSError as e:  # writing: name the output (not a temporary file, or nothing)
        if e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, args.out) from e
    finally:
        for path in (temp, meta_path if marked else None):
            if path and os.path.exists(path):
                os.remove(path)
    return meta


def prepared_here(directory) -> bool:
    """directory's meta.json says prepare wrote it (its files may be replaced)."""
    try:
        with open(os.path.join(directory, META_FILE), encoding="utf-8") as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


@common.entry("prepare")
def main(argv=None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    files = list_files(args.inputs)
    try:  # where outputs go (numpy_gpt2.io.outputs): checked before any work
        output_directory(args.out, PREPARED_FILES, ours=prepared_here)
        check_outside_inputs(args.out, args.inputs)
    except ValueError as e:
        raise UsageError(f"--out {e}") from None
    try:
        tokenizer = numpy_gpt2.load_tokenizer()
    except (ValueError, OSError, RuntimeError) as e:
        raise common.input_error(e) from None
    made, bar = None, None
    try:
        made = make_directories(args.out)
        bar = tqdm(total=sum(os.path.getsize(f) for f in files), unit="B", unit_scale=True,
                   desc="prepare", file=sys.stderr, dynamic_ncols=True)
        meta = prepare(args, files, tokenizer, bar.update)
    except BaseException as e:
        if made:
            remove_directories(made)  # a failed run leaves no new empty directory
        if isinstance(e, OSError):
            raise common.input_error(e) from None
        raise
    finally:
        if bar is not None:
            bar.close()
    print(f"{args.out}: train.bin {meta['train']['tokens']:,} tokens ({meta['train']['documents']:,} "
          f"documents), val.bin {meta['val']['tokens']:,} tokens ({meta['val']['documents']:,} documents)")
    return 0
