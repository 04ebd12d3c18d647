"""A training run in memory (Run: everything the loop reads and changes, typed) and its
directory on disk (RunDirectory: created and locked in one step, recovered, released).

A run directory belongs to one process at a time: it holds an flock on the directory itself
(numpy_gpt2.io.atomic.lock_directory; the kernel drops it when the process ends, even by
kill -9). Locking finishes or discards the saves a crash interrupted, in the run directory and
in its best/ (atomic.recover). A run that ends without a save in its directory leaves nothing
there: the best/ it wrote is removed, and so is the directory (and its parents) when this
process created it, but only while this process holds its lock: no other process can undo
what one process created and locked. What the files hold is state.py's; the loop,
loop.py's. docs/runs.md describes the directory.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from numpy_gpt2.io.atomic import DirectoryLocked, lock_directory, recover  # noqa: F401 (re-raised)
from numpy_gpt2.training import distributed
from numpy_gpt2.training.settings import DEFAULT_BLOCK_SIZE, TrainSettings
from numpy_gpt2.training.state import BEST_DIR, BEST_FILES, RUN_FILES, holds_save, rng_state


@dataclass
class Run:
    """Everything a training run holds in memory: settings, model, AdamW state (its "step" is
    the run's step), the batch sampler's RNG, the data splits and the fixed evaluation batches,
    the metrics so far, and bookkeeping (the step of the last save, the best val loss). out:
    the directory saves go to (None: nothing is saved, e.g. an evaluation only)."""
    settings: TrainSettings
    config: object
    params: dict
    opt_state: dict
    rng: np.random.Generator
    splits: dict  # {"train": tokens, "val": tokens}
    evals: dict  # {"train": [(x, y), ...], "val": [...]}: fixed evaluation batches
    tokenizer: object
    tokenizer_dir: str
    out: str | None = None
    data_sha256: str | None = None
    metrics: list = field(default_factory=list)
    world: object = field(default_factory=distributed.Solo)
    peak_flops: float | None = None  # of one process; None: measured at the first evaluation
    best: float = math.inf  # the val loss of the checkpoint in out/best/
    saved_step: int | None = None  # the step of the save in out (None: nothing saved yet)
    installed: bool = True  # False while that save is committed but not yet installed
    interval: tuple = (0.0, 0)  # training seconds and tokens since the last evaluation
    said_no_plot: bool = False

    @property
    def step(self) -> int:
        return self.opt_state["step"]

    @property
    def tokens_per_step(self) -> int:
        s = self.settings
        return s.batch_size * s.block_size * s.gradient_accumulation_steps * self.world.size

    def state_info(self) -> dict:
        """train_state.json's contents beside the step (state.save_run's info)."""
        return {"settings": self.settings.to_json(), "rng": rng_state(self.rng),
                "data_sha256": self.data_sha256, "numpy_gpt2": "train.py",
                "world_size": self.world.size}


class RunDirectoryError(ValueError):
    """A run directory cannot be opened, created or recovered: str names the path; .reason
    says why, without it."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _same_directory_entry(fd: int, path: str) -> bool:
    """Whether the open directory fd is still the one named path (not removed or replaced
    between opening and locking it)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _check_can_hold(path: str, error: OSError) -> None:
    """After mkdir(path) failed with ENOENT: RunDirectoryError when path's parent exists
    (it was not removed meanwhile, so it cannot hold a new directory, as /proc cannot)."""
    parent = os.path.dirname(path)
    if os.path.isdir(parent):
        raise RunDirectoryError(path, f"cannot create anything in {parent} "
                                f"({error.strerror})") from None


class RunDirectory:
    """The directories a run reads and writes, each locked and recovered before use (see module
    doc), released at the end. With several MPI ranks only rank 0 (owner=True) locks,
    recovers, creates and saves: the other ranks' attempts would find rank 0's lock.
    Raises DirectoryLocked when another process holds a lock, ValueError naming the path when
    a directory cannot be opened, created or recovered."""

    def __init__(self, owner: bool = True):
        self.owner = owner
        self.locks = {}  # realpath -> descriptor
        self.created = []  # directories this process made and holds the lock of, innermost first
        self.had_best = {}  # realpath -> whether its best/ existed when it was locked

    def lock(self, path) -> None:
        """Lock the existing directory path and finish or discard its interrupted saves."""
        key = os.path.realpath(path)
        if key in self.locks or not self.owner:
            return
        try:
            self.locks[key] = lock_directory(path)
        except OSError as e:
            raise RunDirectoryError(path, f"cannot open the directory ({e.strerror})") from None
        self._recover(path)
        self.had_best[key] = os.path.isdir(os.path.join(path, BEST_DIR))

    def _recover(self, path) -> None:
        try:
            recover(path, names=RUN_FILES)
            recover(os.path.join(path, BEST_DIR), names=BEST_FILES)
        except OSError as e:
            raise RunDirectoryError(path, f"cannot finish an interrupted save there ({e.strerror})") from None

    def create_and_lock(self, path) -> None:
        """Make path (and missing parents) unless it exists, and lock it, as one step: if
        another process creates or locks it meanwhile, exactly one of the two holds the lock,
        and only the holder ever removes it (release). The directory is then recovered."""
        if not self.owner or os.path.realpath(path) in self.locks:
            return
        path = os.path.realpath(path)  # a symlink (also a dangling one): its target
        for _ in range(1000):  # another process removing what it created: try again
            missing, d = [], os.path.dirname(path)
            while not os.path.exists(d):
                missing.append(d)
                d = os.path.dirname(d)
            made = []  # what THIS process made, deepest first (another may make some meanwhile)
            try:
                for d in [*reversed(missing), path]:
                    try:
                        os.mkdir(d)
                        made.insert(0, d)
                    except FileExistsError:
                        pass
            except FileNotFoundError as e:
                _check_can_hold(d, e)
                continue  # a parent was removed meanwhile
            except OSError as e:
                raise RunDirectoryError(path, f"cannot create the directory ({e.strerror})") from None
            try:
                fd = lock_directory(path)  # DirectoryLocked: another process holds it
            except FileNotFoundError:  # removed by the process that created it
                continue
            except OSError as e:
                raise RunDirectoryError(path, f"cannot open the directory ({e.strerror})") from None
            if not _same_directory_entry(fd, path):  # removed (and maybe made again) meanwhile
                os.close(fd)
                continue
            self.locks[path] = fd
            self.created = made  # (path first when this process made it: release's rule)
            self._recover(path)
            self.had_best[path] = os.path.isdir(os.path.join(path, BEST_DIR))
            return
        raise RunDirectoryError(path, f"cannot create the directory (other processes keep removing it)")

    def release(self) -> None:
        """Undo what a run that saved nothing wrote (see module doc), while still holding the
        locks: in each locked directory without a save, the best/ this process wrote; then the
        directories this process created if they are empty; then unlock."""
        import shutil

        for key in self.locks:
            best = os.path.join(key, BEST_DIR)
            if not self.had_best.get(key, True) and not holds_save(key) and os.path.isdir(best):
                shutil.rmtree(best, ignore_errors=True)  # (what cannot go stays: never an error)
        for d in self.created:
            try:
                if d == self.created[0] and os.path.isdir(os.path.join(d, BEST_DIR)):
                    os.rmdir(os.path.join(d, BEST_DIR))
                os.rmdir(d)
            except OSError:  # not empty: a save is in it
                break
        self.created = []
        for fd in self.locks.values():
            os.close(fd)
        self.locks.clear()
        self.had_best.clear()


# ----------------------------------------------------------------------------------------
# Opening a run: a new model, a checkpoint to fine-tune (init), or a saved run to resume.

class RunFinished(Exception):
    """The run to resume has already done its max_iters steps (.step, .directory)."""

    def __init__(self, message, step: int, directory):
        super().__init__(message)
        self.step, self.directory = step, directory


def file_sha256(path) -> str:
    """sha256 of the data file, or of a token directory's train.bin then val.bin, read in
    chunks (a token file can be larger than memory)."""
    import hashlib

    digest = hashlib.sha256()
    files = [os.path.join(path, f"{n}.bin") for n in ("train", "val")] if os.path.isdir(path) else [path]
    for name in files:
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def find_tokenizer_files(source) -> str:
    """A directory holding GPT-2's vocab.json + merges.txt, to use and to copy into every save:
    source's own (a checkpoint or run directory), else $NUMPY_GPT2_TOKENIZER's, else the two
    files downloaded (once, then cached) from the hub's openai-community/gpt2. ValueError
    when none can be had."""
    from numpy_gpt2.io.tokenizer import TOKENIZER_ENV, TOKENIZER_FILES, tokenizer_dir

    try:
        directory = tokenizer_dir(source)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    if directory is not None:
        return directory
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download("openai-community/gpt2", allow_patterns=list(TOKENIZER_FILES))
    except Exception:  # offline, no cache, hub down, huggingface_hub missing
        raise ValueError(f"GPT-2's {' and '.join(TOKENIZER_FILES)} are needed (every save "
                         f"holds a copy) and could not be fetched from the Hugging Face "
                         f"hub (offline?): to work offline, set {TOKENIZER_ENV} to a directory "
                         f"holding them, or init from a checkpoint directory that has them") from None


def check_memory(settings: TrainSettings, config, itemsize: int) -> None:
    """ValueError when the run cannot fit in this machine's RAM (memory.memory_needed, a lower
    bound), before anything is allocated."""
    from numpy_gpt2.training.memory import memory_needed, physical_memory

    total = physical_memory()
    if total is None:
        return
    s = settings
    parts = memory_needed(config, itemsize, batch=s.batch_size, tokens=s.block_size, training=True,
                          micro_batches=s.gradient_accumulation_steps, eval_batches=2 * s.eval_iters)
    need = sum(parts.values())
    if need > total:
        gib = lambda n: f"{n / 2**30:,.1f} GiB"  # noqa: E731
        raise ValueError(f"this run needs at least {gib(need)} of memory ("
                         + ", ".join(f"{what} {gib(n)}" for what, n in parts.items())
                         + f") and this machine has {gib(total)}: use smaller n_layer, n_embd, "
                           f"batch_size, block_size, gradient_accumulation_steps or eval_iters")


def open_run(settings: TrainSettings, *, out=None, resume_dir=None, info=None,
             init_path=None, world=None, peak_flops=None, stop_if_finished=True,
             tokenizer_files=find_tokenizer_files) -> Run:
    """Everything training needs, every input checked, nothing written: the settings
    (block_size and bias resolved), the model (resume_dir's, settings.init's checkpoint, or a
    new one with GPT-2's initialisation), the data splits, the tokenizer, AdamW's state, the
    batch sampler's RNG, the fixed evaluation batches and the metrics so far. Resuming:
    resume_dir and its train_state.json (info) with settings merged by settings.resume.
    init_path: settings.init already resolved (numpy_gpt2.resolve_model).
    With several ranks rank 0 alone reads the data's vocabulary and hash.
    Raises ValueError (CheckpointError included) or OSError naming what is wrong, and
    RunFinished when the resumed run is at max_iters (stop_if_finished)."""
    import hashlib

    import numpy_gpt2
    from numpy_gpt2.initialization import init_params
    from numpy_gpt2.io.inputs import is_pipe
    from numpy_gpt2.io.token_files import max_token
    from numpy_gpt2.training import data as gpt2_data
    from numpy_gpt2.training import state
    from numpy_gpt2.training.settings import resolve_block_size

    world = world or distributed.Solo()
    s = settings
    dtype = np.dtype(s.dtype)
    if resume_dir is not None:
        params, config = numpy_gpt2.load(resume_dir, dtype=dtype)
        tok_dir = tokenizer_files(resume_dir)
        if config.bias != s.bias:  # the run's own files disagree: never change the model
            say = {True: "with biases", False: "without biases"}
            raise ValueError(f"resume_dir {resume_dir}: the run trains a model {say[s.bias]} "
                             f"({state.STATE_FILE}: \"bias\": {str(s.bias).lower()}), but its "
                             f"config.json describes one {say[config.bias]}; restore config.json "
                             f"({'with' if not s.bias else 'without'} \"bias\": false)")
    elif s.init is not None:
        init_path = init_path or numpy_gpt2.resolve_model(s.init)
        params, config = numpy_gpt2.load(init_path, dtype=dtype)
        tok_dir = tokenizer_files(init_path)
    else:
        config = numpy_gpt2.GPT2Config(n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd,
                                       n_ctx=s.block_size or DEFAULT_BLOCK_SIZE, bias=s.bias)
        tok_dir = tokenizer_files(None)
        params = None  # drawn after the data checks (a 124M init takes seconds)
    s = resolve_block_size(s.replace(bias=config.bias), config.n_ctx)  # the checkpoint's bias
    check_memory(s, config, dtype.itemsize)
    tokenizer = numpy_gpt2.load_tokenizer(tok_dir)
    data_path = os.path.abspath(s.data)
    digest = None
    if is_pipe(data_path):  # read once (a FIFO cannot be read again to hash it)
        text = gpt2_data.read_text(data_path)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()  # (its bytes: strict UTF-8)
        splits = gpt2_data.text_splits(text, tokenizer)
    else:
        splits = gpt2_data.load_data(data_path, tokenizer)
    for name, tokens in splits.items():
        gpt2_data.check_split_length(tokens, s.block_size, name)
        top = max_token(tokens) if world.is_root else 0  # one pass over the data: rank 0's
        if top >= config.vocab_size:
            raise ValueError(f"data {data_path}: the {name} split's token ids reach {top}, "
                             f"beyond the model's vocab_size={config.vocab_size}")
    if digest is None:
        digest = file_sha256(data_path) if world.is_root else None
    if resume_dir is not None:
        if world.is_root and info["data_sha256"] != digest:
            raise ValueError(f"data {data_path}: not the file the run in {resume_dir} was "
                             f"trained on (sha256 differs)")
        opt_state, info = state.load_training_state(resume_dir, params)
        if stop_if_finished and info["step"] == s.max_iters:
            raise RunFinished(f"the run in {resume_dir} has finished: it is at step {info['step']} "
                              f"of max_iters {s.max_iters}", info["step"], resume_dir)
        rng = state.restore_rng(info, resume_dir)
        # The metrics were saved in the same commit as the state: exactly its steps.
        metrics = state.resumed_metrics(resume_dir, opt_state["step"])
    else:
        if params is None:
            params = init_params(config, seed=s.seed, dtype=dtype)
        opt_state = numpy_gpt2.adamw_init(params)
        rng = np.random.default_rng([s.seed, 1])  # the batch sampler's own stream
        metrics = []
    evals = {name: gpt2_data.eval_batches(tokens, s.block_size, s.batch_size, s.eval_iters,
                                          seed=[s.seed, 2 + i])
             for i, (name, tokens) in enumerate(splits.items())}
    same = resume_dir is not None and out is not None and same_directory(out, resume_dir)
    return Run(settings=s.replace(data=data_path), config=config, params=params,
               opt_state=opt_state, rng=rng, splits=splits, evals=evals, tokenizer=tokenizer,
               tokenizer_dir=tok_dir, out=out, data_sha256=digest, metrics=metrics, world=world,
               peak_flops=peak_flops, best=state.best_so_far(out) if out else math.inf,
               saved_step=opt_state["step"] if same else None)


def same_directory(a, b) -> bool:
    """Whether two paths name the same directory (symlinks, '..' and hard links resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)
