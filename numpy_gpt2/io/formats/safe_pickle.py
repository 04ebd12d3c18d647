"""A pickle reader that never runs code from the file: an interpreter for pickle's data opcodes.

Python's pickle.load imports and calls whatever the file names (``os.system``, ``eval``, any
class's ``__reduce__``); a checkpoint downloaded from the internet must not be able to do
that. This interpreter builds only plain data -- None, bools, ints, floats, str, bytes,
tuples, lists, dicts, sets -- and calls nothing but the functions the caller allows, by
(module, name), in `allowed` (numpy_gpt2.io.formats.torch_bin allows the few a PyTorch state
dict needs, implemented by numpy_gpt2 itself). Any other global (GLOBAL, STACK_GLOBAL,
INST) is refused naming it; the opcodes that create objects of a class (OBJ, NEWOBJ,
NEWOBJ_EX), look up the extension registry (EXT1/2/4) or take out-of-band buffers are
refused outright.

Resources stay bounded by the input: no recursion (nested tuples are never hashed: dict keys
and set members must be str, int, float, bool, None or bytes), the memo is a dict (a memo
index of 2**32 allocates nothing), lengths are checked against the bytes left, and every
opcode does work proportional to what earlier opcodes pushed, so a pickle of n bytes runs in
O(n) time and memory. Reference: the opcode table in CPython's Lib/pickletools.py.
"""

from __future__ import annotations

import struct

from numpy_gpt2.checks import cut, show
from numpy_gpt2.errors import CheckpointError

MAX_LINE = 1000  # text opcodes (GLOBAL, INT, PUT, ...): one line, at most this many bytes


class _Mark:
    """The stack marker MARK pushes."""


MARK = _Mark()
_KEY_TYPES = (str, int, float, bool, type(None), bytes)
_REFUSED = {  # opcode byte -> what it would do
    b"i": "INST (creates an instance of a named class)",
    b"o": "OBJ (creates an instance of a class)",
    b"\x81": "NEWOBJ (creates an instance of a class)",
    b"\x92": "NEWOBJ_EX (creates an instance of a class)",
    b"\x82": "EXT1 (looks up the copyreg extension registry)",
    b"\x83": "EXT2 (looks up the copyreg extension registry)",
    b"\x84": "EXT4 (looks up the copyreg extension registry)",
    b"\x97": "NEXT_BUFFER (out-of-band data)",
    b"\x98": "READONLY_BUFFER (out-of-band data)",
    b"S": "STRING (protocol 0 text string)",
    b"V": "UNICODE (protocol 0 text string)",
    b"P": "PERSID (protocol 0 persistent id)",
}


class PickleRefused(Exception):
    """Raised by an allowed function (or persistent_load) for arguments it does not accept;
    becomes a CheckpointError naming the file and the byte."""


def unpickle(data, start: int, where: str, allowed: dict, persistent_load=None) -> tuple:
    """Read one pickle from data[start:] -> (value, end offset).

    data: bytes, or any buffer (an mmap). allowed: {(module, name): value}; GLOBAL and
    STACK_GLOBAL push that value, REDUCE calls it (when callable) with the pickled
    arguments. persistent_load(pid) -> value for BINPERSID, or None to refuse them.
    Raises CheckpointError "<where>: ..." for a refused global or opcode (naming it) and for
    any malformed or truncated pickle (naming the byte offset).
    """
    vm = _Machine(memoryview(data).cast("B"), start, allowed, persistent_load)
    try:
        return vm.run(), vm.pos
    except CheckpointError:  # from persistent_load or an allowed function: already says where
        raise
    except PickleRefused as e:
        raise CheckpointError(f"{where}: refused pickle at byte {vm.op_pos}: {e}") from None
    except (IndexError, KeyError, TypeError, ValueError, AttributeError, OverflowError,
            RecursionError, MemoryError, struct.error, UnicodeDecodeError) as e:
        raise CheckpointError(f"{where}: corrupted pickle at byte {vm.op_pos}: "
                              f"{type(e).__name__}: {cut(str(e))}") from None


class _Machine:
    def __init__(self, data, pos, allowed, persistent_load):
        self.data, self.pos, self.op_pos = data, pos, pos
        self.allowed, self.persistent_load = allowed, persistent_load
        self.stack, self.memo = [], {}

    # --- reading the input -----------------------------------------------------------
    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"truncated: {n} bytes wanted, {len(self.data) - self.pos} left")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def line(self) -> str:
        end = min(len(self.data), self.pos + MAX_LINE)
        raw = bytes(self.data[self.pos:end])
        i = raw.find(b"\n")
        if i < 0:
            raise ValueError(f"no end of line within {MAX_LINE} bytes")
        self.pos += i + 1
        return raw[:i].decode("ascii")

    # --- the stack -------------------------------------------------------------------
    def pop_mark(self) -> list:
        """The items pushed since the last MARK (and drop the mark)."""
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is MARK:
                items = self.stack[i + 1:]
                del self.stack[i:]
                return items
        raise ValueError("no MARK on the stack")

    def pop(self):
        value = self.stack.pop()
        if value is MARK:
            raise ValueError("MARK where a value was expected")
        return value

    def push_global(self, module: str, name: str) -> None:
        if (module, name) not in self.allowed:
            raise PickleRefused(f"global {cut(repr(f'{module}.{name}'))} is not allowed (a "
                                f"checkpoint needs only {', '.join(sorted(f'{m}.{n}' for m, n in self.allowed))})")
        self.stack.append(self.allowed[(module, name)])

    # --- the loop ----------------------------------------------------------------------
    def run(self):
        ops = _OPS
        while True:
            self.op_pos = self.pos
            op = self.take(1)
            if op == b".":
                if len(self.stack) != 1:
                    raise ValueError(f"STOP with {len(self.stack)} values on the stack, expected 1")
                return self.pop()
            if op in _REFUSED:
                raise PickleRefused(f"opcode {_REFUSED[op]} is not allowed")
            handler = ops.get(op)
            if handler is None:
                raise ValueError(f"unknown opcode {op!r}")
            handler(self)

    # --- opcodes -----------------------------------------------------------------------
    def proto(self):
        if self.uint(1) > 5:
            raise ValueError("pickle protocol above 5")

    def frame(self):
        self.uint(8)  # frames only help buffering

    def mark(self):
        self.stack.append(MARK)

    def global_(self):
        module, name = self.line(), self.line()
        self.push_global(module, name)

    def stack_global(self):
        name, module = self.pop(), self.pop()
        if not isinstance(module, str) or not isinstance(name, str):
            raise TypeError("STACK_GLOBAL needs two strings")
        self.push_global(module, name)

    def reduce(self):
        args, func = self.pop(), self.pop()
        if not callable(func) or not isinstance(args, tuple):
            raise PickleRefused(f"REDUCE of {show(func)} with {show(args)} (only the allowed "
                                f"functions can be called, with a tuple of arguments)")
        self.stack.append(func(*args))

    def build(self):
        state, target = self.pop(), self.stack[-1]
        if not isinstance(target, dict):
            raise PickleRefused(f"BUILD (setting the state of an object) of {show(target)}")
        # An OrderedDict's attributes (torch's state dict's `_metadata`): not needed, dropped.

    def persid(self):
        pid = self.pop()
        if self.persistent_load is None:
            raise PickleRefused("persistent id, but this pickle may not refer to other data")
        self.stack.append(self.persistent_load(pid))

    def put(self, index):
        if not self.stack or self.stack[-1] is MARK:
            raise ValueError("memo PUT with nothing to store")
        self.memo[index] = self.stack[-1]

    def get(self, index):
        self.stack.append(self.memo[index])

    def set_items(self, target, items):
        if not isinstance(target, dict) or len(items) % 2:
            raise TypeError(f"SETITEMS on {type(target).__name__} with {len(items)} items")
        for key, value in zip(items[::2], items[1::2]):
            if type(key) not in _KEY_TYPES:
                raise TypeError(f"dict key of type {type(key).__name__}")
            target[key] = value

    def add_items(self, target, items):
        if not isinstance(target, set) or any(type(i) not in _KEY_TYPES for i in items):
            raise TypeError("ADDITEMS needs a set and plain items")
        target.update(items)

    def append_items(self, target, items):
        if not isinstance(target, list):
            raise TypeError(f"APPENDS on {type(target).__name__}")
        target.extend(items)

    def text_int(self):
        text = self.line()  # protocol 0 writes booleans as INT 01 / 00
        self.stack.append(True if text == "01" else False if text == "00" else int(text))

    def text_long(self):
        self.stack.append(int(self.line().removesuffix("L")))


def _new(value_factory):
    return lambda vm: vm.stack.append(value_factory())


def _const(value):
    return lambda vm: vm.stack.append(value)


def _frozenset(vm):
    items = vm.pop_mark()
    if any(type(i) not in _KEY_TYPES for i in items):
        raise TypeError("FROZENSET of non-plain items")
    vm.stack.append(frozenset(items))


def _dict(vm):
    d = {}
    vm.set_items(d, vm.pop_mark())
    vm.stack.append(d)


def _set_item(vm):
    value, key = vm.pop(), vm.pop()
    vm.set_items(vm.stack[-1], [key, value])


def _dup(vm):
    vm.stack.append(vm.stack[-1])


_M = _Machine
_OPS = {
    b"\x80": _M.proto, b"\x95": _M.frame, b"(": _M.mark,
    b"0": lambda vm: vm.pop(), b"1": lambda vm: vm.pop_mark(), b"2": _dup,
    b"N": _const(None), b"\x88": _const(True), b"\x89": _const(False),
    b"I": _M.text_int, b"L": _M.text_long, b"F": lambda vm: vm.stack.append(float(vm.line())),
    b"J": lambda vm: vm.stack.append(int.from_bytes(vm.take(4), "little", signed=True)),
    b"K": lambda vm: vm.stack.append(vm.uint(1)),
    b"M": lambda vm: vm.stack.append(vm.uint(2)),
    b"\x8a": lambda vm: vm.stack.append(int.from_bytes(vm.take(vm.uint(1)), "little", signed=True)),
    b"\x8b": lambda vm: vm.stack.append(int.from_bytes(vm.take(vm.uint(4)), "little", signed=True)),
    b"G": lambda vm: vm.stack.append(struct.unpack(">d", vm.take(8))[0]),
    b"X": lambda vm: vm.stack.append(vm.take(vm.uint(4)).decode("utf-8", "surrogatepass")),
    b"\x8c": lambda vm: vm.stack.append(vm.take(vm.uint(1)).decode("utf-8", "surrogatepass")),
    b"\x8d": lambda vm: vm.stack.append(vm.take(vm.uint(8)).decode("utf-8", "surrogatepass")),
    b"B": lambda vm: vm.stack.append(vm.take(vm.uint(4))),
    b"C": lambda vm: vm.stack.append(vm.take(vm.uint(1))),
    b"\x8e": lambda vm: vm.stack.append(vm.take(vm.uint(8))),
    b"\x96": lambda vm: vm.stack.append(bytearray(vm.take(vm.uint(8)))),
    # Python 2 str: torch's legacy files were read with encoding="latin1" by its loaders too.
    b"T": lambda vm: vm.stack.append(vm.take(vm.uint(4)).decode("latin-1")),
    b"U": lambda vm: vm.stack.append(vm.take(vm.uint(1)).decode("latin-1")),
    b")": _new(tuple), b"]": _new(list), b"}": _new(dict), b"\x8f": _new(set),
    b"t": lambda vm: vm.stack.append(tuple(vm.pop_mark())),
    b"\x85": lambda vm: vm.stack.append((vm.pop(),)),
    b"\x86": lambda vm: vm.stack.append(tuple(reversed([vm.pop(), vm.pop()]))),
    b"\x87": lambda vm: vm.stack.append(tuple(reversed([vm.pop(), vm.pop(), vm.pop()]))),
    b"l": lambda vm: vm.stack.append(vm.pop_mark()),
    b"d": _dict, b"\x91": _frozenset,
    b"a": lambda vm: vm.append_items(vm.stack[-2], [vm.pop()]),
    b"e": lambda vm: (lambda items: vm.append_items(vm.stack[-1], items))(vm.pop_mark()),
    b"s": _set_item,
    b"u": lambda vm: (lambda items: vm.set_items(vm.stack[-1], items))(vm.pop_mark()),
    b"\x90": lambda vm: (lambda items: vm.add_items(vm.stack[-1], items))(vm.pop_mark()),
    b"p": lambda vm: vm.put(int(vm.line())), b"q": lambda vm: vm.put(vm.uint(1)),
    b"r": lambda vm: vm.put(vm.uint(4)), b"\x94": lambda vm: vm.put(len(vm.memo)),
    b"g": lambda vm: vm.get(int(vm.line())), b"h": lambda vm: vm.get(vm.uint(1)),
    b"j": lambda vm: vm.get(vm.uint(4)),
    b"c": _M.global_, b"\x93": _M.stack_global, b"R": _M.reduce, b"b": _M.build,
    b"Q": _M.persid,
}
