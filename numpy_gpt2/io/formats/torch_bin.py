"""Files written by torch.save (pytorch_model.bin, nanoGPT's ckpt.pt), read without torch.

Two layouts exist (torch/serialization.py):
  * zip (torch >= 1.6): an uncompressed zip holding <root>/data.pkl, the pickled object, and
    <root>/data/<key>, the raw little-endian bytes of each storage;
  * legacy (before): five pickles in a row -- the magic number 0x1950a86a20f9469cfc6c, the
    protocol version 1001, a dict of system info, the object, the list of storage keys --
    then, for each key in that order, the storage's element count (int64) and its bytes.
In both the object refers to storages by persistent ids ("storage", storage type, key,
location, element count[, view]) and builds tensors with torch._utils._rebuild_tensor_v2
(storage, offset, size, stride, ...). The pickles are read by safe_pickle, which allows
exactly these globals (implemented here, returning descriptions, never torch objects) and
refuses any other. Every storage must lie inside the file and every tensor inside its
storage; no storage byte is read here (tensor_copy copies them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import mmap
import os
import re
import zipfile
import zlib

from numpy_gpt2.checks import cut, show
from numpy_gpt2.errors import CheckpointError
from numpy_gpt2.io.formats.safe_pickle import PickleRefused, unpickle
from numpy_gpt2.io.formats.tensor_copy import ITEMSIZE, Stored

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
MAX_PICKLE_BYTES = 1 << 28  # data.pkl of gpt2-xl is ~50 kB; nanoGPT's with its optimizer ~100 kB
STORAGE_TYPES = {"FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16",
                 "DoubleStorage": "F64", "LongStorage": "I64", "IntStorage": "I32",
                 "ShortStorage": "I16", "CharStorage": "I8", "ByteStorage": "U8",
                 "BoolStorage": "BOOL"}
_KEY = re.compile(r"[0-9A-Za-z_]{1,64}")  # torch writes decimal numbers; never a path


@dataclasses.dataclass(frozen=True)
class StorageType:
    """What the global torch.FloatStorage (etc.) stands for: the stored dtype."""
    name: str
    dtype: str


@dataclasses.dataclass(eq=False)
class StorageRef:
    """One storage: `numel` elements of `dtype` starting at byte `offset` of the file (None
    until located). A legacy view is `numel` elements of `root` from element `start`."""
    key: str
    dtype: str
    numel: int
    offset: int | None = None
    root: StorageRef | None = None
    start: int = 0


@dataclasses.dataclass(eq=False)
class TensorRef:
    """A tensor: elements storage[offset + sum(i_k * strides_k)] for i in shape."""
    storage: StorageRef
    offset: int
    shape: tuple
    strides: tuple

    def stored(self, path: str) -> Stored:
        root = self.storage.root or self.storage
        first = self.storage.start + self.offset
        return Stored(path, self.storage.dtype, self.shape,
                      root.offset + first * ITEMSIZE[self.storage.dtype], self.strides)

    def place(self) -> tuple:
        """Equal for tensors over the same elements (torch's tied weights: lm_head.weight
        is transformer.wte.weight)."""
        return (id(self.storage.root or self.storage), self.storage.start + self.offset,
                self.shape, self.strides)


def _naturals(value, what) -> tuple:
    if not isinstance(value, tuple) or len(value) > 8 or not all(
            type(v) is int and v >= 0 for v in value):
        raise PickleRefused(f"tensor {what} {show(value)}, expected a tuple of integers >= 0")
    return value


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    """torch._utils._rebuild_tensor(_v2): a TensorRef, checked to lie inside its storage."""
    if not isinstance(storage, StorageRef):
        raise PickleRefused(f"tensor over {show(storage)}, expected a storage")
    if type(storage_offset) is not int or storage_offset < 0:
        raise PickleRefused(f"tensor storage offset {show(storage_offset)}")
    size, stride = _naturals(size, "size"), _naturals(stride, "stride")
    if len(size) != len(stride):
        raise PickleRefused(f"tensor size {size} and stride {stride} differ in length")
    if all(size):
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.numel:
            raise PickleRefused(f"tensor of size {list(size)}, stride {list(stride)} at offset "
                                f"{storage_offset} reaches element {last} of a storage of "
                                f"{storage.numel} elements")
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       metadata=None):
    if backward_hooks != {}:  # hooks would be functions: refused as globals anyway
        raise PickleRefused("tensor with backward hooks")
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """torch._utils._rebuild_parameter(_with_state): an nn.Parameter is its tensor."""
    if not isinstance(data, TensorRef):
        raise PickleRefused(f"parameter of {show(data)}, expected a tensor")
    return data


def _ordered_dict(items=()):
    """collections.OrderedDict([(key, value), ...]): a dict (they keep their order)."""
    if not isinstance(items, (list, tuple)) or not all(
            isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], (str, int)) for i in items):
        raise PickleRefused("OrderedDict of anything but (str or int, value) pairs")
    return dict(items)


def _size(dims=()):
    return _naturals(tuple(dims) if isinstance(dims, (list, tuple)) else dims, "size")


ALLOWED = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _size,
    **{("torch", name): StorageType(name, dtype) for name, dtype in STORAGE_TYPES.items()},
}


def is_legacy_torch(head: bytes) -> bool:
    """The file starts with a pickle (protocol 2 to 5) of the legacy magic number."""
    return head[:1] == b"\x80" and MAGIC_NUMBER.to_bytes(10, "little") in head[:24]


def read_torch(path: str):
    """The object torch.save wrote to `path` (zip or legacy layout), with TensorRefs for
    tensors whose storages are located in the file. Raises CheckpointError."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if head == b"PK\x03\x04":
        return _read_zip(path, size)
    return _read_legacy(path, size)


# --- zip layout ---------------------------------------------------------------------------

def _read_zip(path: str, size: int):
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except Exception as e:  # zipfile raises many types on a damaged archive; all mean "corrupt"
        raise CheckpointError(f"{path}: not a readable zip archive ({type(e).__name__}: "
                              f"{cut(str(e))})") from None
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise CheckpointError(f"{path}: zip archive lists a file twice")
    pickles = [n for n in names if n.endswith("data.pkl")]
    if len(pickles) != 1 or not re.fullmatch(r"[^/]+/data\.pkl", pickles[0]):
        raise CheckpointError(f"{path}: expected one <name>/data.pkl in the archive (torch.save's "
                              f"layout), found {show(pickles[:5])}")
    root = pickles[0][:-len("/data.pkl")]
    entries = {i.filename: i for i in infos}
    if entries.get(f"{root}/byteorder") is not None:
        if _read_entry(path, entries[f"{root}/byteorder"], size, 16) != b"little":
            raise CheckpointError(f"{path}: {root}/byteorder is not 'little' (big-endian "
                                  f"checkpoints are not supported)")
    data = _read_entry(path, entries[pickles[0]], size, MAX_PICKLE_BYTES)
    storages: dict[str, StorageRef] = {}

    def persistent_load(pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise PickleRefused(f"persistent id {show(pid)}, expected ('storage', type, key, "
                                f"location, size)")
        _, kind, key, _location, numel = pid
        ref = _storage(kind, key, numel, storages)
        if ref.offset is None:
            info = entries.get(f"{root}/data/{key}")
            if info is None:
                raise PickleRefused(f"storage {key!r} is not in the archive")
            nbytes = numel * ITEMSIZE[ref.dtype]
            if info.file_size != nbytes:
                raise PickleRefused(f"storage {key!r} holds {info.file_size} bytes, its "
                                    f"{numel} {ref.dtype} elements need {nbytes}")
            ref.offset = _entry_start(path, info, size)
        return ref

    obj, end = unpickle(data, 0, f"{path} ({pickles[0]})", ALLOWED, persistent_load)
    if end != len(data):
        raise CheckpointError(f"{path}: {pickles[0]} has {len(data) - end} bytes after its end")
    return obj


def _storage(kind, key, numel, storages) -> StorageRef:
    """The StorageRef for a persistent id's (type, key, numel), the same object each time."""
    if not isinstance(kind, StorageType):
        raise PickleRefused(f"storage type {show(kind)}")
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise PickleRefused(f"storage key {show(key)} (expected a short name of letters and "
                            f"digits, never a path)")
    if type(numel) is not int or numel < 0:
        raise PickleRefused(f"storage size {show(numel)}")
    ref = storages.setdefault(key, StorageRef(key, kind.dtype, numel))
    if (ref.dtype, ref.numel) != (kind.dtype, numel):
        raise PickleRefused(f"storage {key!r} is used as {kind.dtype} x {numel} and as "
                            f"{ref.dtype} x {ref.numel}")
    return ref


def _entry_start(path, info: zipfile.ZipInfo, size: int) -> int:
    """Byte offset in the file of a stored (uncompressed) zip entry's data, checked to fit."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1 \
            or info.compress_size != info.file_size:
        raise CheckpointError(f"{path}: {info.filename} is compressed or encrypted (torch.save "
                              f"stores entries uncompressed)")
    if not 0 <= info.header_offset <= size - 30:
        raise CheckpointError(f"{path}: {info.filename}: its local zip header would be at byte "
                              f"{info.header_offset} of a {size}-byte file")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise CheckpointError(f"{path}: {info.filename}: no local zip header at byte "
                                  f"{info.header_offset}")
        start = (info.header_offset + 30 + int.from_bytes(local[26:28], "little")
                 + int.from_bytes(local[28:30], "little"))
    if start + info.file_size > size:
        raise CheckpointError(f"{path}: truncated: {info.filename} needs bytes {start}.."
                              f"{start + info.file_size} of a {size}-byte file")
    return start


def _read_entry(path, info, size, limit) -> bytes:
    """A small stored entry's bytes, CRC-checked."""
    if info.file_size > limit:
        raise CheckpointError(f"{path}: {info.filename} is {info.file_size} bytes, more than "
                              f"the {limit} expected")
    start = _entry_start(path, info, size)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(info.file_size)
    if zlib.crc32(data) != info.CRC:
        raise CheckpointError(f"{path}: {info.filename} is corrupted (CRC mismatch)")
    return data


# --- legacy layout -------------------------------------------------------------------------

def _read_legacy(path: str, size: int):
    if size < 16:
        raise CheckpointError(f"{path}: not a torch.save file ({size} bytes, too short)")
    with open(path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse_legacy(path, size, data)
    finally:
        with contextlib.suppress(BufferError):  # a view still held elsewhere: GC closes it
            data.close()


def _parse_legacy(path, size, data):
    magic, pos = unpickle(data, 0, path, {})
    if magic != MAGIC_NUMBER:
        raise CheckpointError(f"{path}: not a torch.save file (no magic number)")
    version, pos = unpickle(data, pos, path, {})
    if version != PROTOCOL_VERSION:
        raise CheckpointError(f"{path}: torch legacy protocol version {show(version)}, "
                              f"expected {PROTOCOL_VERSION}")
    info, pos = unpickle(data, pos, path, {})
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise CheckpointError(f"{path}: not written on a little-endian machine (sys_info "
                              f"{show(info)})")
    roots: dict[str, StorageRef] = {}
    views: dict[str, StorageRef] = {}

    def persistent_load(pid):
        if isinstance(pid, tuple) and pid[:1] == ("module",):
            raise PickleRefused("a pickled torch module (torch.save(model)); save "
                                "model.state_dict() instead")
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise PickleRefused(f"persistent id {show(pid)}, expected ('storage', type, key, "
                                f"location, size, view)")
        _, kind, key, _location, numel, view = pid
        root = _storage(kind, key, numel, roots)
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                and _KEY.fullmatch(view[0]) and all(type(v) is int and v >= 0 for v in view[1:])
                and view[1] + view[2] <= numel):
            raise PickleRefused(f"storage view {show(view)} of a {numel}-element storage")
        ref = views.setdefault(view[0], StorageRef(view[0], root.dtype, view[2], root=root,
                                                   start=view[1]))
        if (ref.root, ref.start, ref.numel) != (root, view[1], view[2]):
            raise PickleRefused(f"storage view {view[0]!r} defined twice differently")
        return ref

    obj, pos = unpickle(data, pos, path, ALLOWED, persistent_load)
    keys, pos = unpickle(data, pos, path, {})
    if not isinstance(keys, list) or set(keys) != set(roots) or len(keys) != len(roots):
        raise CheckpointError(f"{path}: the list of storages {show(keys)} does not match the "
                              f"{len(roots)} storages the object uses")
    for key in keys:
        ref = roots[key]
        if pos + 8 > size:
            raise CheckpointError(f"{path}: truncated: storage {key!r} would start at byte {pos} "
                                  f"of a {size}-byte file")
        numel = int.from_bytes(data[pos:pos + 8], "little", signed=True)
        if numel != ref.numel:
            raise CheckpointError(f"{path}: storage {key!r} at byte {pos} says {numel} elements, "
                                  f"the object says {ref.numel}")
        ref.offset = pos + 8
        pos = ref.offset + numel * ITEMSIZE[ref.dtype]
        if pos > size:
            raise CheckpointError(f"{path}: truncated: storage {key!r} needs bytes "
                                  f"{ref.offset}..{pos} of a {size}-byte file")
    if pos != size:
        raise CheckpointError(f"{path}: {size - pos} unexpected bytes after the last storage")
    return obj


def state_dict_tensors(obj, path: str, what: str = "the file") -> dict[str, Stored]:
    """A pickled state dict ({name: tensor}) -> {name: Stored}; tied copies (a name whose
    tensor is the same elements as an earlier name's) map to the same Stored."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: {what} holds {show(obj)}, expected a state dict "
                              f"(names -> tensors)")
    out, places = {}, {}
    for name, value in obj.items():
        if not isinstance(name, str) or not name.isprintable() or len(name) > 1000 \
                or not isinstance(value, TensorRef):
            raise CheckpointError(f"{path}: {what} maps {show(name)} to {show(value)}, "
                                  f"expected tensor names -> tensors")
        out[name] = places.setdefault(value.place(), value.stored(path))
    return out
