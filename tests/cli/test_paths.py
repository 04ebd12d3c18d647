"""The paths every command is given (docs/scripts.md, "Where outputs go" and "What inputs may
be"), one KIND at a time for every output and input flag: symlink loops, dangling symlinks
to a directory output, places that cannot hold a directory (/proc), a file output ending in
"/", empty paths, devices as text inputs (refused at once: they never end), pipes (read where
one file is read), and an output directory holding its own input. Asserted every time: the
documented status, one error line naming the flag or argument, nothing written.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import threading

import pytest

from helpers.hostile import check_run
from helpers.run_scripts import BASE, SCRIPTS, StrPath, cached_tokenizer, in_process, make_world  # noqa: F401

from numpy_gpt2.io.inputs import check_text_input
from numpy_gpt2.io.outputs import check_outside_inputs, check_path_name

# Every output: (command, flag or positional index in BASE's argv, a file or a directory, extra).
FILE_OUTPUTS = [("dump", "--out"), ("explain", "--out"), ("convert", 1)]
DIR_OUTPUTS = [("convert-hf", 1), ("prepare", "--out"), ("train", "--out")]
OUTPUTS = FILE_OUTPUTS + DIR_OUTPUTS
# Every text input read as one file: (command, flag or positional index).
TEXT_INPUTS = [("perplexity", 0), ("generate", "--prompts-file"), ("train", "--data"),
               ("prepare", 0)]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer_dir):
    return make_world(tmp_path_factory.mktemp("paths"), tokenizer_dir)


def name_of(command):
    return command.split("-")[0]


def argv_of(command, world, out):
    argv = [str(a) for a in BASE[name_of(command)](world, StrPath(out))]
    if command == "convert-hf":
        argv[argv.index("llmc")] = "hf"
    if command == "prepare":  # enough documents for both splits
        argv[0] = str(world.documents)
    if command == "generate":
        argv = argv[1:] + ["--prompts-file", str(world.text)]  # (a file instead of the prompt)
    return argv


def replaced(argv, where, value):
    """argv with the value of flag `where` (or of the where-th positional) replaced."""
    argv = list(argv)
    if isinstance(where, int):
        slots = [i for i, a in enumerate(argv) if not a.startswith("-")
                 and (i == 0 or not argv[i - 1].startswith("--"))]
        argv[slots[where]] = str(value)
    elif where in argv:
        argv[argv.index(where) + 1] = str(value)
    else:
        argv += [where, str(value)]
    return argv


def named(where) -> str:
    """How a refusal names the argument before the path: its flag ("--out "), or nothing for
    a positional argument (the path itself names it)."""
    return f"{where} " if isinstance(where, str) else ""


def refused(command, argv, cwd, what, budget=60):
    name = name_of(command)
    r = in_process(name, argv, cwd, budget=budget)
    check_run(name, r.status, r.err, cwd, what)
    assert r.status == 2, (what, r.err)
    return r.err.strip().splitlines()[-1]


# ---- outputs -------------------------------------------------------------------------------

@pytest.mark.parametrize("command, where", OUTPUTS, ids=[c for c, _ in OUTPUTS])
def test_a_symlink_loop_as_an_output_is_refused(command, where, world, tmp_path, cached_tokenizer):
    os.symlink("loop2", tmp_path / "loop1")
    os.symlink("loop1", tmp_path / "loop2")
    for out in ("loop1", os.path.join("loop1", "x")):  # the loop itself, or a path through it
        line = refused(command, replaced(argv_of(command, world, tmp_path), where, out),
                       tmp_path, f"{command} {where} {out}")
        assert f"{named(where)}{out}: is a symlink loop" in line, line
        assert os.path.islink(tmp_path / "loop1") and os.path.islink(tmp_path / "loop2")


@pytest.mark.parametrize("command, where", DIR_OUTPUTS, ids=[c for c, _ in DIR_OUTPUTS])
def test_a_dangling_symlink_as_a_directory_output_creates_its_target(command, where, world,
                                                                      tmp_path, cached_tokenizer):
    os.symlink("target", tmp_path / "link")
    r = in_process(name_of(command), replaced(argv_of(command, world, tmp_path), where, "link"),
                   tmp_path, budget=120)
    assert r.status == 0, r.err
    assert os.path.islink(tmp_path / "link") and os.readlink(tmp_path / "link") == "target"
    assert os.path.isdir(tmp_path / "target") and os.listdir(tmp_path / "target")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
@pytest.mark.parametrize("command, where", OUTPUTS, ids=[c for c, _ in OUTPUTS])
def test_an_output_where_nothing_can_be_created(command, where, world, tmp_path, cached_tokenizer):
    for out in ("/proc/numpy-gpt2-x", "/proc/numpy-gpt2-x/y"):
        line = refused(command, replaced(argv_of(command, world, tmp_path), where, out),
                       tmp_path, f"{command} {where} {out}")
        assert line.split(": error: ", 1)[1].startswith(f"{named(where)}{out}: "), line
        assert "in /proc" in line and "removing" not in line, line


@pytest.mark.parametrize("command, where", FILE_OUTPUTS, ids=[c for c, _ in FILE_OUTPUTS])
def test_a_file_output_ending_in_a_separator_is_refused(command, where, world, tmp_path,
                                                         cached_tokenizer):
    for out in ("new/", "deeper/new/"):
        line = refused(command, replaced(argv_of(command, world, tmp_path), where, out),
                       tmp_path, f"{command} {where} {out}")
        assert f"{named(where)}{out}: ends with '/': give a file name" in line, line
        assert not os.path.lexists(tmp_path / "new") and not os.path.lexists(tmp_path / "deeper")


# ---- empty paths ---------------------------------------------------------------------------

EMPTY = OUTPUTS + TEXT_INPUTS + [("dump", "--model"), ("convert", 0), ("compare", 0),
                                 ("convert-hf", "--tokenizer")]


@pytest.mark.parametrize("command, where", EMPTY, ids=[f"{c} {w}" for c, w in EMPTY])
def test_an_empty_path_is_refused(command, where, world, tmp_path, cached_tokenizer):
    line = refused(command, replaced(argv_of(command, world, tmp_path), where, ""), tmp_path,
                   f"{command} {where} ''")
    message = line.split(": error: ", 1)[1]
    assert "empty" in message, line
    if isinstance(where, str):
        assert message.startswith(f"{where} is empty"), line
    else:  # the positional argument's name (OUT, FILE, INPUT, SOURCE, REFERENCE)
        assert re.match(r"[A-Z]+ is empty", message), line
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)  # nothing written (not in ".")


# ---- inputs --------------------------------------------------------------------------------

def _limited():  # a regression (reading a device to its end) fails, never eats the machine
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


INPUTS = TEXT_INPUTS + [("dump", "--model"), ("convert", 0), ("compare", 0),
                       ("convert-hf", "--tokenizer")]


@pytest.mark.parametrize("command, where", INPUTS, ids=[f"{c} {w}" for c, w in INPUTS])
def test_a_symlink_loop_as_an_input_is_refused(command, where, world, tmp_path, cached_tokenizer):
    os.symlink("loop2", tmp_path / "loop1")
    os.symlink("loop1", tmp_path / "loop2")
    line = refused(command, replaced(argv_of(command, world, tmp_path), where, "loop1"),
                   tmp_path, f"{command} {where} loop1")
    assert line.split(": error: ", 1)[1].startswith(f"{named(where)}loop1: is a symlink loop"), line
    assert sorted(os.listdir(tmp_path)) == ["loop1", "loop2"]


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/full"])
@pytest.mark.parametrize("command, where", TEXT_INPUTS, ids=[c for c, _ in TEXT_INPUTS])
def test_a_device_as_a_text_input_is_refused_at_once(command, where, device, world, tmp_path):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    argv = replaced(argv_of(command, world, tmp_path), where, device)
    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, f"{name_of(command)}.py"), *argv],
                          cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
                          preexec_fn=_limited, env={**os.environ, "OMP_NUM_THREADS": "1"})
    err = proc.stderr.decode(errors="replace")
    check_run(name_of(command), proc.returncode, err, tmp_path, f"{command} {where} {device}")
    assert proc.returncode == 2, err
    flag = f"{where} " if isinstance(where, str) else ""
    assert f"{flag}{device}: is a device, not a text file" in err, err
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


def feed(path, text: str):
    """A thread writing text into the FIFO or pipe end `path` (an int: a pipe's write end)."""
    def write():
        if isinstance(path, int):
            with os.fdopen(path, "w", encoding="utf-8") as f:
                f.write(text)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("kind", ["FIFO", "pipe /dev/fd/N"])
@pytest.mark.parametrize("command, where", TEXT_INPUTS[:3], ids=[c for c, _ in TEXT_INPUTS[:3]])
def test_a_pipe_is_read_where_one_file_is_read(command, where, kind, world, tmp_path,
                                               cached_tokenizer):
    if kind == "FIFO":
        os.mkfifo(tmp_path / "fifo")
        path, end = tmp_path / "fifo", tmp_path / "fifo"
    else:
        if not os.path.isdir("/dev/fd"):
            pytest.skip("no /dev/fd")
        read, end = os.pipe()
        path = f"/dev/fd/{read}"
    text = "Hello\nworld\n" if command == "generate" else open(world.long).read()
    thread = feed(end, text)
    try:
        r = in_process(name_of(command), replaced(argv_of(command, world, tmp_path), where, path),
                       tmp_path, budget=120)
    finally:
        if kind != "FIFO":
            os.close(read)
    thread.join(5)
    assert r.status == 0, r.err
    if command == "train":  # the run hashed the text it read (a pipe is not read twice)
        with open(tmp_path / "run" / "train_state.json", encoding="utf-8") as f:
            import hashlib
            digest = json.load(f)["data_sha256"]
        assert digest == hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_prepare_refuses_a_pipe_with_the_reason(world, tmp_path, cached_tokenizer):
    os.mkfifo(tmp_path / "fifo")
    line = refused("prepare", [tmp_path / "fifo", "--out", tmp_path / "tokens"], tmp_path,
                   "prepare FIFO")
    assert "is a pipe (FIFO)" in line and "no such file" not in line, line
    assert sorted(os.listdir(tmp_path)) == ["fifo"]


# ---- an output holding its input -----------------------------------------------------------

def test_an_output_directory_holding_an_input_is_refused(world, tmp_path, cached_tokenizer):
    corpus = tmp_path / "corpus"
    os.mkdir(corpus)
    with open(corpus / "a.txt", "w", encoding="utf-8") as f:
        f.write(open(world.documents).read())
    for out in (corpus, tmp_path):
        line = refused("prepare", [corpus / "a.txt", "--out", out], tmp_path, f"prepare --out {out}")
        assert f"--out {out}: contains the input {corpus / 'a.txt'}" in line, line
    assert os.listdir(corpus) == ["a.txt"]


def test_prepare_never_reads_a_prepared_directorys_own_files(world, tmp_path, cached_tokenizer):
    corpus = tmp_path / "corpus"
    os.mkdir(corpus)
    with open(corpus / "a.txt", "w", encoding="utf-8") as f:
        f.write(open(world.documents).read())
    assert in_process("prepare", [corpus / "a.txt", "--out", tmp_path / "alone"], tmp_path).status == 0
    assert in_process("prepare", [corpus / "a.txt", "--out", corpus / "tokens"], tmp_path).status == 0
    r = in_process("prepare", [corpus, "--out", tmp_path / "all"], tmp_path)
    assert r.status == 0, r.err
    counts = [json.load(open(tmp_path / d / "meta.json")) for d in ("alone", "all")]
    assert [c["train"] for c in counts[:1]] == [counts[1]["train"]]  # the same one document read
    assert counts[0]["val"] == counts[1]["val"]


# ---- the library's own checks (ValueErrors name the path; the commands add the flag) --------

def test_the_library_checks_name_the_path(tmp_path):
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    cases = [(lambda: check_path_name("", file=True), "'': an empty path; give a file name"),
             (lambda: check_path_name("", file=False), "'': an empty path; give a directory name"),
             (lambda: check_path_name(tmp_path / "a", file=False), f"{tmp_path / 'a'}: is a symlink loop"),
             (lambda: check_path_name("x/", file=True), "x/: ends with '/': give a file name"),
             (lambda: check_text_input(""), "'': an empty path"),
             (lambda: check_text_input(tmp_path / "a"), f"{tmp_path / 'a'}: is a symlink loop"),
             (lambda: check_outside_inputs(tmp_path, [tmp_path / "x.txt"]),
              f"{tmp_path}: contains the input {tmp_path / 'x.txt'}"),
             (lambda: check_outside_inputs(tmp_path / "o", [tmp_path]),
              f"{tmp_path / 'o'}: is inside the input {tmp_path}")]
    if os.path.exists("/dev/zero"):
        cases.append((lambda: check_text_input("/dev/zero"), "/dev/zero: is a device, not a text file"))
    for call, message in cases:
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value).startswith(message), (str(e.value), message)
    check_path_name("x/", file=False)  # a directory may end in "/"
    check_text_input(tmp_path / "missing")  # left to the reader, which says why
    check_outside_inputs(tmp_path / "o", [tmp_path / "x.txt"])
