"""Unpickling weight files without running them, within bounds.

Every global a pickle names must be on an explicit allowlist of inert stand-ins or plain data types.
Beyond that, a hostile pickle cannot:

* change shared state: BUILD (``__setstate__``) is refused on anything the same load did not create
  with REDUCE/NEWOBJ (so the allowlist's stand-ins, shared by all loads, cannot be altered), and on
  the objects it did create it runs only for the types that need it (numpy arrays and dtypes,
  namespaces; an OrderedDict's state, torch's ``_metadata``, is dropped);
* allocate more than the file holds: reads are clamped to the bytes left in the input, so no length
  field can make us allocate more than the file's own size;
* nest deeply or build huge graphs: the stack, the MARK stack, the memo and the opcode count are
  capped, tuples and frozensets (the containers hashing recurses through in C) are depth-checked as
  they are built, and :func:`check_structure` walks the result iteratively (depth, node count,
  cycles) before any other code touches it; a tuple may not expand to more than MAX_EXPANDED
  values when walked as a tree (what hashing it as a dict key does).

Each limit has a module constant; a refusal names the limit and the value.
"""
from __future__ import annotations

import collections
import io
import pickle
import types
from typing import IO, Any, Callable, Dict, Iterable, Mapping, Optional, Set, Tuple

import numpy as np

__all__ = ["DEFAULT_MAX_BYTES", "AllowlistUnpickler", "check_structure", "latin1_encode", "numpy_dtype", "short_repr"]

#: Most bytes a weights file may make us allocate for its arrays when the model it is loaded into
#: does not set a tighter bound (a training checkpoint of the largest model, 150M parameters with
#: EMA and two Adam moments, is 2.4 GB).
DEFAULT_MAX_BYTES = 4 << 30
#: Deepest container nesting a weights file may have (state dicts are 1-4 levels deep).
MAX_DEPTH = 64
#: Most pickle opcodes, memo entries and stack items in one file (a 1000-tensor state dict uses ~20000 opcodes).
MAX_OPS = 50_000_000
MAX_MEMO = 2_000_000
MAX_STACK = 1_000_000
MAX_MARKS = 256
#: Most distinct containers and values in a loaded structure.
MAX_NODES = 2_000_000
#: Most values a tuple or frozenset may hold when walked as a tree (hashing it as a dict key, comparing
#: it): shared members count once per reference, so nested shared tuples cannot blow up.
MAX_EXPANDED = 1_000_000
#: Most tuple values all the dict and set insertions of one file may hash (one big tuple used as a
#: key again and again costs its expanded size each time).
MAX_HASHED = 20_000_000

# Protocol-2 pickles name Python 2 modules; pickle's own find_class would map them.
_MODULE_ALIASES = {"__builtin__": "builtins"}
_BUILD = pickle.BUILD[0]
_REDUCE, _NEWOBJ, _NEWOBJ_EX = pickle.REDUCE[0], pickle.NEWOBJ[0], pickle.NEWOBJ_EX[0]
_TUPLE_OPS = {op[0] for op in (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3, pickle.FROZENSET)}
_SETITEM = pickle.SETITEM[0]
_HASHING_OPS = {op[0] for op in (pickle.SETITEM, pickle.SETITEMS, pickle.DICT, pickle.ADDITEMS, pickle.FROZENSET)}


def short_repr(value: Any, limit: int = 80) -> str:
    """A bounded description of an untrusted value (repr of a huge or deep structure can hang)."""
    if isinstance(value, (str, bytes)):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if isinstance(value, (int, float, bool, type(None))):
        text = repr(value) if not isinstance(value, int) or value.bit_length() < 256 else "<a huge int>"
        return text[:limit]
    if isinstance(value, np.ndarray):
        return f"array(shape={value.shape}, dtype={value.dtype})"
    size = f" of {len(value)}" if isinstance(value, (tuple, list, dict, set, frozenset)) else ""
    return f"<{type(value).__name__}{size}>"


def latin1_encode(text: Any, encoding: Any) -> bytes:
    """Stand-in for _codecs.encode, which protocol-2 pickles use to store bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("_codecs.encode is allowed only for latin-1 text")
    return text.encode("latin-1")


def is_plain_numeric(dtype: Any) -> bool:
    """A numeric dtype with no fields, sub-arrays or objects."""
    return (isinstance(dtype, np.dtype) and dtype.kind in "biufc" and dtype.names is None
            and dtype.subdtype is None and not dtype.hasobject)


def numpy_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """Stand-in for numpy.dtype: plain numeric dtypes from a type string only, and always a private
    copy, so the BUILD that follows in a pickle never touches numpy's shared descriptors."""
    if not isinstance(spec, str) or len(spec) > 8:
        raise ValueError(f"numpy dtype spec must be a short type string, got {short_repr(spec)}")
    dtype = np.dtype(spec, align=bool(align), copy=True)
    if not is_plain_numeric(dtype):
        raise ValueError(f"numpy dtype {spec!r} is not a plain numeric type")
    return dtype


class _ClampedReader:
    """A file's read/readline/readinto that never ask for more than the bytes left before ``end``
    (so a length field in the pickle cannot make us allocate more than the file holds)."""

    def __init__(self, file: IO[bytes], end: Optional[int] = None):
        self._file = file
        if end is None:
            here = file.tell()
            end = file.seek(0, io.SEEK_END)
            file.seek(here)
        self._end = end

    def _left(self) -> int:
        return max(0, self._end - self._file.tell())

    def read(self, n: int = -1) -> bytes:
        left = self._left()
        return self._file.read(left if n is None or n < 0 else min(n, left))

    def readinto(self, buffer) -> int:
        view = memoryview(buffer)
        return self._file.readinto(view[: self._left()])

    def readline(self, size: int = -1) -> bytes:
        return self._file.readline(self._left() if size < 0 else min(size, self._left()))


class AllowlistUnpickler(pickle._Unpickler):
    """A bounded unpickler that resolves a global only through ``allowed`` ((module, name) -> object);
    any other global raises ``refuse(qualified name)`` before anything from the file runs.

    The pure-Python unpickler is used on purpose: its opcode loop is the one place to enforce the
    bounds above (weights files hold few opcodes; array bytes are single opcodes).
    ``buildable``: the types whose fresh instances BUILD may set state on.
    """

    allowed: Mapping[Tuple[str, str], Any] = {}
    buildable: Tuple[type, ...] = (np.ndarray, np.dtype, collections.OrderedDict, types.SimpleNamespace)

    def __init__(self, file: IO[bytes], *, persistent_load: Optional[Callable[[Any], Any]] = None):
        super().__init__(_ClampedReader(file))
        self._fresh: Set[int] = set()  # ids of objects this load created with REDUCE/NEWOBJ
        self._built: Set[int] = set()
        self._keep: list = []  # keeps fresh objects alive so their ids stay unique
        self._depth: Dict[int, Tuple[int, int]] = {}  # tuple/frozenset id -> (nesting depth, expanded size)
        self._hashed = 0  # tuple values hashed by dict and set insertions so far
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def refuse(self, qualified_name: str) -> Exception:
        return pickle.UnpicklingError(f"it refers to {qualified_name}, which weights never need; "
                                      "nothing from the file was run")

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(_MODULE_ALIASES.get(module, module), name)]
        except (KeyError, TypeError):
            raise self.refuse(f"{str(module)[:100]}.{str(name)[:100]}") from None

    def load(self) -> Any:
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)
        self.read = self._unframer.read
        self.readinto = self._unframer.readinto
        self.readline = self._unframer.readline
        self.metastack = []
        self.stack = []
        self.append = self.stack.append
        self.proto = 0
        read, dispatch = self.read, self.dispatch
        ops = 0
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError("the pickle ends before its STOP opcode")
                op = key[0]
                if op == _BUILD:
                    self._check_build()
                elif op in _HASHING_OPS:
                    self._count_hashing(op)
                dispatch[op](self)
                ops += 1
                if op == _BUILD:
                    self._check_built(self.stack[-1])
                if op in (_REDUCE, _NEWOBJ, _NEWOBJ_EX) and self.stack:
                    self._note_fresh(self.stack[-1])
                elif op in _TUPLE_OPS:
                    self._note_depth(self.stack[-1])
                if (ops > MAX_OPS or len(self.stack) > MAX_STACK or len(self.metastack) > MAX_MARKS
                        or len(self.memo) > MAX_MEMO):
                    raise pickle.UnpicklingError(
                        f"it exceeds the bounds of a weights file (opcodes {ops} of at most {MAX_OPS}, "
                        f"stack {len(self.stack)} of {MAX_STACK}, marks {len(self.metastack)} of "
                        f"{MAX_MARKS}, memo {len(self.memo)} of {MAX_MEMO})")
        except pickle._Stop as stop:
            return stop.value

    def _note_fresh(self, obj: Any) -> None:
        if isinstance(obj, self.buildable):
            self._fresh.add(id(obj))
            self._keep.append(obj)

    @staticmethod
    def _check_built(obj: Any) -> None:
        dtype = obj.dtype if isinstance(obj, np.ndarray) else obj if isinstance(obj, np.dtype) else None
        if dtype is not None and not is_plain_numeric(dtype):
            raise pickle.UnpicklingError(f"it builds an array of dtype {dtype}, not a plain numeric type")

    def _note_depth(self, obj: Any) -> None:
        depth = 1 + max((self._depth.get(id(item), (0, 0))[0] for item in obj), default=0)
        if depth > MAX_DEPTH:
            raise pickle.UnpicklingError(f"its containers nest deeper than {MAX_DEPTH} levels")
        # Hashing or comparing a tuple walks it as a tree: shared members count once per reference.
        size = 1 + sum(self._depth.get(id(item), (0, 1))[1] for item in obj)
        if size > MAX_EXPANDED:
            raise pickle.UnpicklingError(f"its tuples expand to more than {MAX_EXPANDED} values when walked "
                                         f"(a 'billion laughs' file)")
        self._depth[id(obj)] = (depth, size)
        self._keep.append(obj)

    def _count_hashing(self, op: int) -> None:
        """Account for the tuple values the next insertion hashes (items since the MARK are
        ``self.stack`` in the pure-Python unpickler; SETITEM's key is the item under the value)."""
        if op == _SETITEM:
            keys = self.stack[-2:-1]
        elif op in (pickle.SETITEMS[0], pickle.DICT[0]):
            keys = self.stack[0::2]
        else:
            keys = self.stack
        self._hashed += sum(self._depth[id(k)][1] for k in keys if id(k) in self._depth)
        if self._hashed > MAX_HASHED:
            raise pickle.UnpicklingError(f"its dict and set keys hash more than {MAX_HASHED} tuple values "
                                         f"(a 'billion laughs' file)")

    def _check_build(self) -> None:
        if len(self.stack) < 2:
            return  # pickle's own BUILD raises on the short stack
        inst = self.stack[-2]
        if id(inst) not in self._fresh or id(inst) in self._built:
            raise pickle.UnpicklingError(
                f"it sets the state of a {type(inst).__name__} it did not create (or twice); weights "
                "files never do that")
        self._built.add(id(inst))


def check_structure(obj: Any, source: str) -> None:
    """Walk a loaded structure without recursion: containers nest at most MAX_DEPTH deep, hold at
    most MAX_NODES distinct values in all, and contain no cycle. Shared sub-structures are visited
    once, so a "billion laughs" graph costs its size on disk, not its expanded size."""
    seen: Set[int] = set()
    stack = [(obj, 1, False)]
    on_path: Set[int] = set()
    while stack:
        node, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(node))
            continue
        if not isinstance(node, (dict, list, tuple, set, frozenset, types.SimpleNamespace)):
            continue
        if id(node) in on_path:
            raise ValueError(f"{source}: a {type(node).__name__} contains itself")
        if id(node) in seen:
            continue
        if depth > MAX_DEPTH:
            raise ValueError(f"{source}: containers nest deeper than {MAX_DEPTH} levels")
        seen.add(id(node))
        if len(seen) > MAX_NODES:
            raise ValueError(f"{source}: more than {MAX_NODES} containers")
        on_path.add(id(node))
        stack.append((node, depth, True))
        children: Iterable[Any]
        if isinstance(node, dict):
            children = list(node.keys()) + list(node.values())
        elif isinstance(node, (list, tuple, set, frozenset)):
            children = list(node)
        else:
            children = list(vars(node).values())
        stack.extend((child, depth + 1, False) for child in children)
