"""Training runs as processes: one process, or N MPI ranks under mpiexec, with every write
they make recorded (an audit hook), and the check that two runs ended in the same state."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO_ROOT

ROOT = REPO_ROOT
TRAIN = os.path.join(ROOT, "scripts", "train.py")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False
needs_mpi = pytest.mark.skipif(not (HAVE_MPI4PY and MPIEXEC), reason="needs mpi4py and mpiexec "
                               "(pip install -e '.[mpi]' installs both: mpi4py and the mpich wheel)")
TINY = ["--n-layer", 1, "--n-head", 2, "--n-embd", 16, "--block-size", 16, "--batch-size", 2,
        "--eval-iters", 3, "--eval-interval", 2, "--seed", 5, "--lr", 3e-3, "--warmup-iters", 1,
        "--threads", 1]
# Records every write a rank makes under $AUDIT_DIR (Python audit hooks see each open/rename).
AUDIT = '''
import os, sys
_dir = os.environ.get("AUDIT_DIR")
if _dir:
    _log = open(os.environ["AUDIT_LOG"] + "." + os.environ.get("PMI_RANK", "?"), "a", buffering=1)
    def _hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes)) and (args[2] or 0) & (os.O_WRONLY | os.O_RDWR):
            path = os.fsdecode(args[0])
        elif event in ("os.rename", "os.replace", "os.remove", "os.mkdir"):
            path = os.fsdecode(args[0])
        else:
            return
        if os.path.abspath(path).startswith(_dir):
            _log.write(event + " " + path + "\\n")
    sys.addaudithook(_hook)
'''


def one_process(env, *args, timeout=120):
    p = subprocess.run([sys.executable, TRAIN, *map(str, args)], env=env, capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def mpi(env, n, *args, timeout=120):
    p = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, "-m", "mpi4py", TRAIN, *map(str, args)],
                       env=env, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def tensors(directory, name):
    from safetensors.numpy import load_file
    return load_file(os.path.join(directory, name))


def assert_same_run(a, b, atol=0.0):
    """Same weights and AdamW moments (bit for bit when atol == 0) and the same sampler state."""
    for name in ("model.safetensors", "optimizer.safetensors"):
        ta, tb = tensors(a, name), tensors(b, name)
        assert ta.keys() == tb.keys()
        for key in ta:
            if atol:
                np.testing.assert_allclose(ta[key], tb[key], rtol=0, atol=atol, err_msg=f"{name} {key}")
            else:
                np.testing.assert_array_equal(ta[key], tb[key], err_msg=f"{name} {key}")
    sa, sb = (json.load(open(os.path.join(d, "train_state.json"))) for d in (a, b))
    assert sa["rng"] == sb["rng"] and sa["step"] == sb["step"]
