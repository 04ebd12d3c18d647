"""Data parallel over MPI (numpy_gpt2.training.distributed, scripts/train.py under mpiexec): 2 ranks
against one process with twice the gradient accumulation, resume with another rank count,
only rank 0 writes, collective bad-input exits, SIGTERM and a SIGKILLed rank.
Times (2 shared cores): ~1 min in all; every mpiexec run is a 2-4 step run of a tiny model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import REPO_ROOT
from numpy_gpt2.training.distributed import Solo, launched_size

ROOT = REPO_ROOT
from helpers.mpi_runs import (MPIEXEC, TINY, TRAIN, assert_same_run, mpi, needs_mpi, one_process,  # noqa: F401
                              tensors)


def test_solo_is_the_identity():
    assert launched_size() == 1 or "PMI_SIZE" in os.environ
    solo = Solo()
    assert solo.share(range(4)) == [0, 1, 2, 3] and solo.any(True) and not solo.any(False)
    assert solo.first_error("x") == "x" and solo.first_error(None) is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity masks (Linux)")
def test_threads_follow_the_affinity_mask_or_the_variable():
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from numpy_gpt2.fast.threads import thread_count, thread_pool; "
            "print(thread_count(), thread_pool()._max_workers)")
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_GPT2_THREADS"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert run.stdout.split() == ["1", "1"], run.stderr  # pinned to one core: one worker
    run = subprocess.run([sys.executable, "-c", code], env=dict(env, NUMPY_GPT2_THREADS="3"),
                         capture_output=True, text=True, cwd=ROOT)
    assert run.stdout.split() == ["3", "3"], run.stderr
    run = subprocess.run([sys.executable, "-c", code], env=dict(env, NUMPY_GPT2_THREADS="x"),
                         capture_output=True, text=True, cwd=ROOT)
    assert "NUMPY_GPT2_THREADS='x': expected an integer >= 1" in run.stderr


@needs_mpi
@pytest.mark.parametrize("dtype, dropout", [("float32", 0.1), ("float64", 0.0)])
def test_two_ranks_equal_one_process_with_grad_accum_2_bit_for_bit(env, token_dir, tmp_path, dtype, dropout):
    """2 ranks x 1 micro-batch: the gradient sum g0 + g1 is the one process's own addition, so
    weights, moments and sampler agree exactly (with dropout too: each micro-batch's masks
    come from its seed in the shared stream). Rank 1 writes nothing (audited)."""
    args = ["--data", token_dir, *TINY, "--dtype", dtype, "--max-iters", 4, "--dropout", dropout]
    status, _, err = one_process(env, *args, "--out", tmp_path / "one", "--grad-accum", 2)
    assert status == 0, err
    audit = dict(env, AUDIT_DIR=str(tmp_path / "two"), AUDIT_LOG=str(tmp_path / "writes"))
    status, out, err = mpi(audit, 2, *args, "--out", tmp_path / "two")
    assert status == 0, err
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert out.count("step 4: train loss") == 1  # rank 0 alone prints
    assert os.path.getsize(f"{tmp_path / 'writes'}.0") > 0  # the audit sees rank 0's saves
    assert open(f"{tmp_path / 'writes'}.1").read() == ""  # rank 1: no write at all
    state = json.load(open(tmp_path / "two" / "train_state.json"))
    assert state["world_size"] == 2 and state["settings"]["grad_accum"] == 1


@needs_mpi
def test_two_ranks_by_two_micro_batches_resumed_by_one_process(env, token_dir, tmp_path):
    """2 ranks x --grad-accum 2 against one process x 4 (the sum is ordered differently:
    (g0 + g1) + (g2 + g3) vs ((g0 + g1) + g2) + g3, so float64 agrees to 1e-12, not bit for
    bit), the 2-rank run resumed by one process halfway (which takes --grad-accum 4 from the
    saved 2 ranks x 2)."""
    args = ["--data", token_dir, *TINY, "--dtype", "float64"]
    status, _, err = one_process(env, *args, "--out", tmp_path / "one", "--grad-accum", 4, "--max-iters", 4)
    assert status == 0, err
    status, _, err = mpi(env, 2, *args, "--out", tmp_path / "two", "--grad-accum", 2, "--max-iters", 2)
    assert status == 0, err
    status, out, err = one_process(env, "--resume", tmp_path / "two", "--max-iters", 4)
    assert status == 0, err
    assert json.load(open(tmp_path / "two" / "train_state.json"))["settings"]["grad_accum"] == 4
    assert_same_run(tmp_path / "one", tmp_path / "two", atol=1e-12)


def test_resumed_grad_accum_keeps_the_micro_batches_per_step():
    from numpy_gpt2.training.settings import resumed_accumulation_steps as resumed
    def saved(world_size, grad_accum):
        return {"world_size": world_size, "settings": {"grad_accum": grad_accum}}
    assert resumed(saved(2, 1), None, 1) == 2  # 2 x 1 -> 1 x 2
    assert resumed(saved(1, 4), None, 2) == 2  # 1 x 4 -> 2 x 2
    assert resumed({"settings": {"grad_accum": 3}}, None, 1) == 3  # no world_size: 1
    assert resumed(saved(2, 3), 5, 4) == 5  # --grad-accum given: that one
    with pytest.raises(ValueError, match="1 rank\\(s\\) x gradient_accumulation_steps 3 = 3 "
                       "micro-batches per step, which 2 ranks cannot share equally"):
        resumed(saved(1, 3), None, 2)
    from helpers.run_scripts import load_script
    train = load_script("train")  # the command line words it with the flag
    assert train.flags("the run was saved with 1 rank(s) x gradient_accumulation_steps 3 = 3 "
                       "micro-batches per step, which 2 ranks cannot share equally; give "
                       "gradient_accumulation_steps to change the batch") == (
        "the run was saved with 1 rank(s) x --grad-accum 3 = 3 micro-batches per step, which 2 "
        "ranks cannot share equally; give --grad-accum to change the batch")


def ranks_exit_codes(env, tmp_path, per_rank_args):
    """Run one rank per argument list (MPMD), each through a shell that records its exit
    status; returns (mpiexec status, stderr, [status of rank 0, rank 1, ...])."""
    cmd = [MPIEXEC]
    for i, args in enumerate(per_rank_args):
        cmd += ([":"] if i else []) + ["-n", "1", "sh", "-c",
                                       f'"$0" -m mpi4py "$@"; s=$?; echo $s > {tmp_path}/exit.$PMI_RANK; exit $s',
                                       sys.executable, TRAIN, *map(str, args)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    return p.returncode, p.stderr, [int(open(f"{tmp_path}/exit.{r}").read()) for r in range(len(per_rank_args))]


@needs_mpi
def test_bad_input_exits_2_on_every_rank_with_one_line(env, token_dir, tmp_path):
    args = ["--data", token_dir, *TINY, "--max-iters", 2, "--out", tmp_path / "o"]
    status, err, codes = ranks_exit_codes(env, tmp_path, [[*args, "--lr", -1]] * 2)
    assert status == 2 and codes == [2, 2], err
    assert err.strip().splitlines() == ["train.py: error: --lr -1.0 is invalid: expected a number > 0"]
    # Only rank 1 sees bad input (its --data is missing): rank 0 reports it, both exit 2.
    bad = [a if a != token_dir else tmp_path / "missing" for a in args]
    status, err, codes = ranks_exit_codes(env, tmp_path, [args, bad])
    assert status == 2 and codes == [2, 2], err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: rank 1: ") and "missing" in lines[0]
    assert not (tmp_path / "o" / "train_state.json").exists()


def start_long_run(env, token_dir, out, tmp_path):
    """2 ranks saving every 2 steps for many steps; returns (process, {rank: pid}) once the
    first save is on disk."""
    cmd = [MPIEXEC, "-n", "2", "sh", "-c", f'echo $PMI_RANK $$ >> {tmp_path}/pids; exec "$0" -m mpi4py "$@"',
           sys.executable, TRAIN, "--data", token_dir, *map(str, TINY), "--max-iters", 100000,
           "--out", out]
    p = subprocess.Popen(list(map(str, cmd)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "train_state.json").exists():
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.1)
    pids = dict(line.split() for line in open(tmp_path / "pids"))
    return p, {int(r): int(pid) for r, pid in pids.items()}


def resumes(env, out):
    # A job killed after a save's commit but before its files were installed holds that save
    # (.save-*.commit): the resume installs it first, so read the step the resume will see.
    from numpy_gpt2.io.atomic import recover
    from numpy_gpt2.training.state import RUN_FILES
    recover(out, names=RUN_FILES)
    step = json.load(open(out / "train_state.json"))["step"]
    status, _, err = one_process(env, "--resume", out, "--max-iters", step + 1)
    assert status == 0, err
    assert json.load(open(out / "train_state.json"))["step"] == step + 1


@needs_mpi
def test_sigkill_of_one_rank_ends_the_job_and_leaves_a_resumable_run(env, token_dir, tmp_path):
    p, pids = start_long_run(env, token_dir, tmp_path / "run", tmp_path)
    time.sleep(0.5)
    os.kill(pids[1], signal.SIGKILL)
    began = time.time()
    try:
        p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail("the job still ran 30 s after one rank was killed")
    print(f"job ended {time.time() - began:.2f} s after the SIGKILL, status {p.returncode}")
    assert p.returncode != 0 and time.time() - began < 30
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # rank 0 is gone too
    resumes(env, tmp_path / "run")


@needs_mpi
def test_sigterm_on_one_rank_saves_on_all_and_exits_128_plus_sigterm(env, token_dir, tmp_path):
    p, pids = start_long_run(env, token_dir, tmp_path / "run", tmp_path)
    os.kill(pids[1], signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, err  # every rank: the signal rank 1 received
    assert "SIGTERM: stopped at step" in err and "--resume" in err
    resumes(env, tmp_path / "run")


@needs_mpi
def test_a_non_finite_loss_stops_every_rank_with_status_1(env, token_dir, tmp_path):
    status, err, codes = ranks_exit_codes(env, tmp_path, [["--data", token_dir, *TINY, "--lr", 1e30,
                                                           "--warmup-iters", 0, "--max-iters", 6,
                                                           "--out", tmp_path / "o"]] * 2)
    assert codes == [1, 1] and status == 1, err
    assert "is not finite" in err and "the last save" in err
