"""pytorch_model.bin and ckpt.pt are pickles: reading one must never run code from it.

Every payload below would create a marker file if anything in it ran (os.system,
subprocess, eval, exec, getattr chains, __reduce__ of any class, every way pickle has to
name or call a global: GLOBAL, STACK_GLOBAL, INST, OBJ, NEWOBJ, NEWOBJ_EX, EXT1/2/4, BUILD
with __setstate__). Each is wrapped as torch.save would wrap it (zip archive and legacy
layout) and loaded: the load must raise one CheckpointError naming the file and what was
refused, and the marker must never appear. Then the archive itself: persistent ids pointing
outside it, storages claiming more bytes than the file holds, tensors reaching past their
storage, nested and compressed archives. And the interpreter agrees with pickle.loads on
plain data (protocols 2 to 5).
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import struct
import subprocess
import zipfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

import numpy_gpt2
from numpy_gpt2 import CheckpointError
from numpy_gpt2.io.formats.safe_pickle import unpickle
from numpy_gpt2.io.formats.torch_bin import MAGIC_NUMBER, PROTOCOL_VERSION


class Reduce:
    """An object that pickles as `func(*args)`: what an attacker writes."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker):
    """name -> pickle bytes that would create `marker` if unpickled by pickle.loads."""
    shell = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    out = {}
    for proto in (0, 2, 4):  # GLOBAL 'posix system' (0, 2); STACK_GLOBAL (4)
        out[f"os.system-p{proto}"] = pickle.dumps(Reduce(os.system, shell), protocol=proto)
        out[f"subprocess.call-p{proto}"] = pickle.dumps(
            Reduce(subprocess.call, ["touch", str(marker)]), protocol=proto)
        out[f"eval-p{proto}"] = pickle.dumps(Reduce(eval, code), protocol=proto)
        out[f"exec-p{proto}"] = pickle.dumps(Reduce(exec, code), protocol=proto)
    # getattr chain: getattr(__import__('os'), 'system')('touch marker')
    out["getattr-chain"] = (
        b"\x80\x02cbuiltins\ngetattr\n(cbuiltins\n__import__\n(X\x02\x00\x00\x00ostRX\x06\x00\x00"
        b"\x00systemtR(X" + struct.pack("<I", len(shell)) + shell.encode() + b"tR.")
    # Python 2 names torch's 2019 files would use
    out["__builtin__.eval"] = b"c__builtin__\neval\n(V" + code.encode() + b"\ntR."
    # INST: instantiate a named class with arguments (protocol 0)
    out["INST"] = b"(X" + struct.pack("<I", len(shell)) + shell.encode() + b"ios\nsystem\n."
    # OBJ: class from the stack (GLOBAL first), then instantiate
    out["OBJ"] = b"(cos\nsystem\nV" + shell.encode() + b"\no."
    # NEWOBJ / NEWOBJ_EX with an allowed-looking class
    out["NEWOBJ"] = b"\x80\x02ccollections\nOrderedDict\n)\x81."
    out["NEWOBJ-os"] = b"\x80\x02cos\nsystem\n)\x81."
    out["NEWOBJ_EX"] = b"\x80\x04ccollections\nOrderedDict\n)}\x92."
    # STACK_GLOBAL from strings built on the stack
    out["STACK_GLOBAL"] = (b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c" + bytes([len(shell)])
                           + shell.encode() + b"\x85R.")
    # EXT1/2/4: a code registered in copyreg (registered by the test, so pickle.loads would run it)
    out["EXT1"] = b"\x80\x02\x82\xf0(V" + shell.encode() + b"\ntR."
    out["EXT2"] = b"\x80\x02\x83\xf0\x00(V" + shell.encode() + b"\ntR."
    out["EXT4"] = b"\x80\x02\x84\xf0\x00\x00\x00(V" + shell.encode() + b"\ntR."
    # BUILD: __setstate__ on an object (here the result of an allowed call) with attacker state
    out["BUILD-on-list"] = b"\x80\x02]}X\x08\x00\x00\x00__dict__}sb."
    # REDUCE of something that is not an allowed function (a storage type marker)
    out["REDUCE-storage-type"] = b"\x80\x02ctorch\nFloatStorage\n)R."
    # A legitimate state dict with one poisoned value
    out["poisoned-state-dict"] = pickle.dumps({"wte.weight": Reduce(os.system, shell)}, protocol=2)
    # the reduce of a global that exists in torch's allowed *module* but is not allowed
    out["torch.load"] = b"\x80\x02ctorch\nload\nX\x04\x00\x00\x00/etc\x85R."
    out["torch._utils._rebuild_from_type_v2"] = b"\x80\x02ctorch._utils\n_rebuild_from_type_v2\n."
    return out


@pytest.fixture(autouse=True)
def extension_registered():
    """Register copyreg extension code 0xf0 as os.system, so EXT payloads are live."""
    copyreg.add_extension("os", "system", 0xF0)
    try:
        yield
    finally:
        copyreg.remove_extension("os", "system", 0xF0)


def zip_archive(data_pkl: bytes, storages=None, root="archive", compress=zipfile.ZIP_STORED,
                extra=None) -> bytes:
    """The bytes of a torch.save-style zip archive holding data_pkl and storages {key: bytes}."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compress) as z:
        z.writestr(f"{root}/data.pkl", data_pkl)
        z.writestr(f"{root}/byteorder", "little")
        for key, raw in (storages or {}).items():
            z.writestr(f"{root}/data/{key}", raw)
        z.writestr(f"{root}/version", "3\n")
        for name, raw in (extra or {}).items():
            z.writestr(name, raw)
    return buf.getvalue()


def legacy(obj_pickle: bytes, keys=(), storages=b"") -> bytes:
    """The bytes of a legacy torch.save file whose object pickle is obj_pickle."""
    return (pickle.dumps(MAGIC_NUMBER, protocol=2) + pickle.dumps(PROTOCOL_VERSION, protocol=2)
            + pickle.dumps({"protocol_version": 1001, "little_endian": True,
                            "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
            + obj_pickle + pickle.dumps(list(keys), protocol=2) + storages)


CASES = sorted(payloads("/m"))


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("name", CASES)
def test_code_in_a_pickle_never_runs(tmp_path, name, layout):
    marker = tmp_path / "marker"
    data = payloads(marker)[name]
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(zip_archive(data) if layout == "zip" else legacy(data))
    with pytest.raises(CheckpointError) as info:
        numpy_gpt2.load(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert "refused" in message or "corrupted pickle" in message, message
    assert not marker.exists()


def test_the_payloads_are_live(tmp_path):
    """The payloads do run under pickle.loads (so the test above tests something)."""
    marker = tmp_path / "marker"
    for name in ("os.system-p2", "eval-p4", "getattr-chain", "INST", "OBJ", "STACK_GLOBAL", "EXT2"):
        try:
            pickle.loads(payloads(marker)[name])
        except Exception:  # noqa: BLE001 -- the side effect is what counts
            pass
        assert marker.exists(), name
        marker.unlink()


@pytest.mark.parametrize("name,refused", [
    ("os.system-p2", "global 'posix.system'"), ("os.system-p4", "global 'posix.system'"),
    ("eval-p4", "global 'builtins.eval'"), ("exec-p4", "global 'builtins.exec'"),
    ("eval-p2", "global '__builtin__.eval'"), ("subprocess.call-p4", "global 'subprocess.call'"), ("getattr-chain", "global 'builtins.getattr'"),
    ("__builtin__.eval", "global '__builtin__.eval'"), ("INST", "opcode INST"),
    ("OBJ", "global 'os.system'"), ("NEWOBJ", "opcode NEWOBJ"), ("NEWOBJ_EX", "opcode NEWOBJ_EX"),
    ("STACK_GLOBAL", "global 'os.system'"), ("EXT1", "opcode EXT1"), ("EXT4", "opcode EXT4"),
    ("BUILD-on-list", "BUILD"), ("REDUCE-storage-type", "REDUCE of"),
    ("torch.load", "global 'torch.load'"),
])
def test_refusals_name_the_global_or_opcode(tmp_path, name, refused):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(zip_archive(payloads(tmp_path / "m")[name]))
    with pytest.raises(CheckpointError, match="refused pickle at byte \\d+: .*" + refused.replace(".", r"\.").replace("(", r"\(")):
        numpy_gpt2.load(path)


# --- the archive around the pickle -----------------------------------------------------------

def storage_pickle(key="0", numel=6, size=(2, 3), stride=(3, 1), offset=0, kind="FloatStorage",
                   legacy_layout=False):
    """A state dict {"w": tensor} pickled as torch does (protocol 2), with a chosen
    persistent id and tensor geometry."""
    def t(values):
        return b"(" + b"".join(b"K" + bytes([v]) for v in values) + b"t"
    pid = (b"(X\x07\x00\x00\x00storagectorch\n" + kind.encode() + b"\nX"
           + struct.pack("<I", len(key.encode())) + key.encode() + b"X\x03\x00\x00\x00cpu"
           + b"J" + struct.pack("<i", numel) + (b"N" if legacy_layout else b"") + b"tQ")
    return (b"\x80\x02}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(" + pid
            + b"J" + struct.pack("<i", offset) + t(size) + t(stride)
            + b"\x89ccollections\nOrderedDict\n)RtRu.")


def test_the_handmade_storage_pickle_is_what_torch_reads(tmp_path):
    import torch
    path = tmp_path / "w.bin"
    path.write_bytes(zip_archive(storage_pickle(), {"0": struct.pack("<6f", *range(6))}))
    assert torch.load(path)["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    path.write_bytes(legacy(storage_pickle(legacy_layout=True), ["0"],
                            struct.pack("<q6f", 6, *range(6))))
    assert torch.load(path, weights_only=False)["w"].tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize("args,storages,message", [
    (dict(key="../../etc/passwd"), {}, "storage key '../../etc/passwd'.*never a path"),
    (dict(key="/etc/passwd"), {}, "storage key '/etc/passwd'"),
    (dict(key="7"), {"0": bytes(24)}, "storage '7' is not in the archive"),
    (dict(numel=10**9), {"0": bytes(24)}, "storage '0' holds 24 bytes, its 1000000000 F32 elements need"),
    (dict(size=(3, 3)), {"0": bytes(24)}, r"tensor of size \[3, 3\], stride \[3, 1\] at offset 0 reaches element 8 of a storage of 6"),
    (dict(offset=5, size=(2,), stride=(1,)), {"0": bytes(24)}, "reaches element 6 of a storage of 6"),
    (dict(kind="UntypedStorage"), {"0": bytes(24)}, "global 'torch.UntypedStorage' is not allowed"),
])
def test_zip_archive_storages_are_bounds_checked(tmp_path, args, storages, message):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(zip_archive(storage_pickle(**args), storages))
    with pytest.raises(CheckpointError, match=message):
        numpy_gpt2.load(path)


@pytest.mark.parametrize("storages,message", [
    (struct.pack("<q", 6) + bytes(20), r"truncated: storage '0' needs bytes \d+\.\.\d+ of a \d+-byte file"),
    (struct.pack("<q", 10**12) + bytes(24), "storage '0' at byte \\d+ says 1000000000000 elements, the object says 6"),
    (struct.pack("<q", 6) + bytes(28), "4 unexpected bytes after the last storage"),
])
def test_legacy_storages_are_bounds_checked(tmp_path, storages, message):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(legacy(storage_pickle(legacy_layout=True), ["0"], storages))
    with pytest.raises(CheckpointError, match=message):
        numpy_gpt2.load(path)


def test_legacy_storage_list_must_match(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(legacy(storage_pickle(legacy_layout=True), ["0", "../1"], bytes(40)))
    with pytest.raises(CheckpointError, match="list of storages .* does not match the 1 storages"):
        numpy_gpt2.load(path)


def test_legacy_pickled_module_is_refused(tmp_path):
    pid = b"(X\x06\x00\x00\x00modulecos\nsystem\nNNtQ"
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(legacy(b"\x80\x02" + pid + b"."))
    with pytest.raises(CheckpointError, match="global 'os.system' is not allowed"):
        numpy_gpt2.load(path)
    path.write_bytes(legacy(b"\x80\x02(X\x06\x00\x00\x00moduleNNNtQ."))
    with pytest.raises(CheckpointError, match=r"a pickled torch module \(torch.save\(model\)\)"):
        numpy_gpt2.load(path)


@pytest.mark.parametrize("build,message", [
    (lambda: zip_archive(storage_pickle(), {"0": bytes(24)}, root="outer/inner"),
     "expected one <name>/data.pkl"),
    (lambda: zip_archive(storage_pickle(), {"0": bytes(24)}, extra={"other/data.pkl": storage_pickle()}),
     "expected one <name>/data.pkl"),
    (lambda: zip_archive(storage_pickle(), {"0": bytes(24)}, compress=zipfile.ZIP_DEFLATED),
     "is compressed or encrypted"),
    # an archive inside the archive, where the pickle should be
    (lambda: zip_archive(zip_archive(storage_pickle(), {"0": bytes(24)}), {"0": bytes(24)}),
     "pickle at byte 0"),
    (lambda: zip_archive(storage_pickle(), {"0": bytes(24)})[:-30], "not a readable zip archive"),
])
def test_nested_compressed_and_broken_archives(tmp_path, build, message):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(build())
    with pytest.raises(CheckpointError, match=message):
        numpy_gpt2.load(path)


def test_big_endian_archives_are_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a/data.pkl", storage_pickle())
        z.writestr("a/byteorder", "big")
        z.writestr("a/data/0", bytes(24))
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="byteorder is not 'little'"):
        numpy_gpt2.load(path)


# --- the interpreter on plain data -----------------------------------------------------------

PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    | st.binary(),
    lambda inner: st.lists(inner) | st.tuples(inner, inner)
    | st.dictionaries(st.text() | st.integers(), inner),
    max_leaves=30)


@given(value=PLAIN, protocol=st.integers(3, 5))  # protocol 2 pickles bytes via _codecs.encode
def test_plain_data_reads_as_pickle_loads_does(value, protocol):
    data = pickle.dumps(value, protocol=protocol)
    got, end = unpickle(data, 0, "x", {})
    assert got == value and end == len(data)


def test_memo_indices_and_deep_nesting_stay_cheap():
    # LONG_BINPUT at index 2**32 - 1 allocates nothing; 100,000 nested tuples are built
    # without recursion and refused as dict keys (hashing them would recurse in C).
    data = b"\x80\x02N r\xff\xff\xff\xff0N."
    assert unpickle(data.replace(b" ", b""), 0, "x", {})[0] is None
    deep = b"\x80\x02}N" + b"\x85" * 100_000 + b"Ns."
    with pytest.raises(CheckpointError, match="dict key of type tuple"):
        unpickle(deep, 0, "x", {})


def test_broken_archive_and_pickle_messages_quote_the_error_plainly(tmp_path):
    """The reader's own error text is quoted as text, not tagged with a JSON type ("(a string)")."""
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(CheckpointError) as error:
        numpy_gpt2.load(path)
    assert str(error.value) == f"{path}: not a readable zip archive (BadZipFile: File is not a zip file)"
    path.write_bytes(zip_archive(b"\x85.", {"0": bytes(24)}))  # TUPLE1 on an empty stack
    with pytest.raises(CheckpointError, match=r"corrupted pickle at byte \d+: \w+: ") as error:
        numpy_gpt2.load(path)
    assert "(a string)" not in str(error.value)
