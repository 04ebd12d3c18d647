"""kill -9 a training run over and over at random moments; check it always resumes and ends
exactly where an uninterrupted run ends. Used by tests/test_run_safety.py; run by hand for a
longer loop:

    NUMPY_GPT2_TOKENIZER=... OPENBLAS_NUM_THREADS=1 python tests/kill_loop.py DIR DATA KILLS SEED

Each attempt is a fork of this process running scripts/train.py's main() (so the imports are
paid once, and a kill lands in the run's own work: loading, training, evaluating, saving,
recovering); the parent sends it SIGKILL after a random delay. The run evaluates and saves
after every step, so most kills land in or between saves. The next attempt resumes
(--resume DIR), or starts the run afresh while DIR holds no saved run yet, exactly as a user
would. A run that reaches its last step is done (the caller compares it with an
uninterrupted run of the same settings, made first) and the next run starts in a new
directory, until KILLS kills have been sent; the last run is then finished without kills.
Prints one JSON line: the directories, counts and where the kills landed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # for `import helpers`
sys.path.insert(0, TESTS)

from helpers.run_scripts import load_script  # noqa: E402

# A tiny model (one step is milliseconds) with GPT-2's vocabulary; warmup then cosine decay.
TRAIN_ARGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
              "--batch-size", "2", "--eval-iters", "1", "--eval-interval", "1", "--seed", "5",
              "--lr", "3e-3", "--min-lr", "3e-4", "--warmup-iters", "3"]


def attempt(script, argv, log, kill_after=None) -> int:
    """Run main(argv) in a forked child; SIGKILL it after kill_after seconds (None: never).
    Returns its exit status, or -9 when it was killed."""
    pid = os.fork()
    if pid == 0:  # the child: train.py's main, its output to the log
        code = 70
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = script.main(argv)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    if kill_after is not None:
        deadline = time.monotonic() + kill_after
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(min(0.002, max(0.0, deadline - time.monotonic())))
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def pending(out) -> str:
    """What an interrupted save left: 'staged' (not committed), 'committed' (not installed
    completely) or 'none'."""
    names = os.listdir(out) if os.path.isdir(out) else []
    if any(n.startswith(".save-") and n.endswith(".commit") for n in names):
        return "committed"
    if any(n.startswith(".save-") and n.endswith(".new") for n in names):
        return "staged"
    return "none"


def saved_step(out):
    try:
        with open(os.path.join(out, "train_state.json"), encoding="utf-8") as f:
            return json.load(f)["step"]
    except FileNotFoundError:
        return None


def main(root, data, kills, seed, max_delay=1.0, steps=12) -> dict:
    import matplotlib.pyplot  # noqa: F401  (imported once here, not in every attempt)

    script = load_script("train")
    # GPT-2's tokenizer, parsed once here instead of in every attempt (0.3 s each): the runs
    # read the same vocab.json and merges.txt (copied into the run), and parsing them is no
    # part of what a kill can damage.
    import numpy_gpt2
    tokenizer = numpy_gpt2.load_tokenizer(os.environ["NUMPY_GPT2_TOKENIZER"])
    numpy_gpt2.load_tokenizer = lambda source=None: tokenizer
    rng = random.Random(seed)
    log = os.path.join(root, "attempts.log")
    reference = os.path.join(root, "reference")
    code = attempt(script, ["--data", data, "--out", reference, *TRAIN_ARGS, "--max-iters", str(steps)], log)
    if code != 0:
        raise SystemExit(f"the uninterrupted run ended with status {code}; see {log}")
    landed = {"staged": 0, "committed": 0, "none": 0}
    runs, done, attempts, max_pending = [], 0, 0, 0
    began = time.monotonic()
    while True:
        out = os.path.join(root, f"run{len(runs)}")
        fresh = ["--data", data, "--out", out, *TRAIN_ARGS, "--max-iters", str(steps)]
        argv = ["--resume", out] if saved_step(out) is not None else fresh
        kill_after = rng.uniform(0.0, max_delay) if done < kills else None
        code = attempt(script, argv, log, kill_after)
        attempts += 1
        if code == 2 and argv is fresh:  # killed while installing its first save: resume it
            code = attempt(script, ["--resume", out], log, kill_after)
            attempts += 1
        if os.path.isdir(out):  # saves left by kills: recovered at each start, so at most one
            max_pending = max(max_pending, len([n for n in os.listdir(out) if n.startswith(".save-")]))
        if code == -signal.SIGKILL:
            done += 1
            landed[pending(out)] += 1
            continue
        if code != 0:
            raise SystemExit(f"attempt {attempts} on {out} ended with status {code}; see {log}")
        runs.append(out)  # finished (killed or not on the way): next run, or stop
        if done >= kills:
            break
    return {"kills": done, "attempts": attempts, "runs": runs, "reference": reference,
            "steps": steps, "landed": landed, "max_pending_saves": max_pending,
            "seconds": round(time.monotonic() - began, 1)}


if __name__ == "__main__":
    root, data, kills, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    max_delay = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
    print(json.dumps(main(root, data, kills, seed, max_delay)))
