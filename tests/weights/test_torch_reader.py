"""ppim.weights.load_torch_checkpoint: torch.save files read without torch, and hostile pickles refused.

Two kinds of fixture: files written by torch.save itself (these need torch, and are read back with
torch hidden from the reader), and zip checkpoints assembled here byte by byte, which pin down the
reader's own rules (byte order, bounds, allowlist) without torch.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import struct
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ppim.weights import CheckpointError, UnsafeCheckpointError, load_torch_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# ---------------------------------------------------------------------------------------------
# Assembling pickles that name any global (torch's, or a hostile one) without importing it.


class Global:
    """`module.name`, pickled by name (a GLOBAL opcode) without importing or resolving it."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle insists a REDUCE target be callable
        raise AssertionError("never called")


class Call:
    """Pickles as `func(*args)` (REDUCE), then BUILD with `state` if given."""

    def __init__(self, func, *args, state=None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


class Storage:
    """A persistent storage reference, as torch.save writes it."""

    def __init__(self, storage_type: str, key: str, numel: int, module: str = "torch") -> None:
        self.pid = ("storage", Global(module, storage_type), key, "cpu", numel)


class Assembler(pickle._Pickler):  # the pure-Python pickler lets us add a dispatch entry
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_global_ref(self, obj: Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[Global] = _save_global_ref

    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, Storage) else None


def assemble(obj, protocol: int = 2) -> bytes:
    buffer = io.BytesIO()
    Assembler(buffer, protocol=protocol).dump(obj)
    return buffer.getvalue()


def tensor(storage: Storage, offset: int, size: tuple, stride: tuple) -> Call:
    hooks = Call(Global("collections", "OrderedDict"))
    return Call(Global("torch._utils", "_rebuild_tensor_v2"), storage, offset, size, stride, False, hooks)


def write_zip(path: Path, data_pkl: bytes, storages: dict | None = None,
              byteorder: bytes | None = b"little") -> Path:
    """A zip checkpoint laid out like torch.save's: archive/data.pkl, archive/data/<key>, records."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        if byteorder is not None:
            archive.writestr("archive/byteorder", byteorder)
        for key, raw in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", raw)
        archive.writestr("archive/version", b"3\n")
    return path


def legacy_header() -> bytes:
    type_sizes = {"short": 2, "int": 4, "long": 4}
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": type_sizes}
    return b"".join(pickle.dumps(part, protocol=2) for part in (LEGACY_MAGIC, 1001, sys_info))


class Evil:
    """Unpickling this runs `func(*args)`: what a hostile checkpoint does."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def read_without_torch(path: Path):
    """Read with torch made unimportable for the reader, as on a machine without it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "torch", None)
        return load_torch_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# Hand-assembled zip checkpoints (no torch needed).


def test_reader_module_does_not_import_torch():
    code = "import sys, ppim.weights; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


def test_views_offsets_and_zero_strides(tmp_path):
    base = np.arange(24, dtype=np.float32)
    storage = Storage("FloatStorage", "0", 24)
    obj = {
        "whole": tensor(storage, 0, (4, 6), (6, 1)),
        "transposed": tensor(storage, 0, (6, 4), (1, 6)),
        "slice": tensor(storage, 7, (2, 3), (6, 2)),
        "expanded": tensor(storage, 5, (3, 4), (0, 1)),
        "scalar": tensor(storage, 23, (), ()),
        "empty": tensor(storage, 0, (2, 0), (1, 1)),
    }
    path = write_zip(tmp_path / "views.pt", assemble(obj), {"0": base.tobytes()})
    got = read_without_torch(path)
    grid = base.reshape(4, 6)
    np.testing.assert_array_equal(got["whole"], grid)
    np.testing.assert_array_equal(got["transposed"], grid.T)
    np.testing.assert_array_equal(got["slice"], grid[1:3, 1::2])
    np.testing.assert_array_equal(got["expanded"], np.broadcast_to(base[5:9], (3, 4)))
    assert got["scalar"].shape == () and got["scalar"] == 23
    assert got["empty"].shape == (2, 0)
    for array in got.values():
        assert array.dtype == np.float32 and array.flags.c_contiguous and array.flags.writeable
    assert not np.shares_memory(got["whole"], got["transposed"])


@pytest.mark.parametrize("byteorder", [b"little", b"big", None])
def test_byteorder_record(tmp_path, byteorder):
    order = ">" if byteorder == b"big" else "<"
    values = {
        "f32": np.array([1.5, -2.25, 3e38], np.float32),
        "f64": np.array([np.pi, -0.0], np.float64),
        "i64": np.array([-(2**62), 7], np.int64),
        "i16": np.array([-300, 300], np.int16),
        "c64": np.array([1 + 2j], np.complex64),
    }
    storage_class = {"f32": "FloatStorage", "f64": "DoubleStorage", "i64": "LongStorage",
                     "i16": "ShortStorage", "c64": "ComplexFloatStorage"}
    bf16_bits = np.array([0x3FC0, 0xC2F7, 0x7F80, 0x0001], np.uint16)  # 1.5, -123.5, inf, subnormal
    obj, raw = {}, {}
    for key, (name, array) in enumerate(values.items()):
        obj[name] = tensor(Storage(storage_class[name], str(key), array.size), 0, array.shape, (1,))
        raw[str(key)] = array.astype(array.dtype.newbyteorder(order)).tobytes()
    obj["bf16"] = tensor(Storage("BFloat16Storage", "bf", 4), 0, (4,), (1,))
    raw["bf"] = bf16_bits.astype(np.dtype(np.uint16).newbyteorder(order)).tobytes()
    got = read_without_torch(write_zip(tmp_path / "order.pt", assemble(obj), raw, byteorder))
    for name, array in values.items():
        assert got[name].dtype == array.dtype and got[name].dtype.isnative
        assert got[name].tobytes() == array.tobytes()
    assert got["bf16"].dtype == np.float32
    np.testing.assert_array_equal(got["bf16"].view(np.uint32), bf16_bits.astype(np.uint32) << 16)
    assert got["bf16"][:3].tolist() == [1.5, -123.5, np.inf]


def test_storage_type_given_as_dtype_and_untyped_storage(tmp_path):
    """Dtypes without a legacy storage class: torch.storage.UntypedStorage plus _rebuild_tensor_v3."""
    values = np.array([1, 65535, 300], np.uint16)
    hooks = Call(Global("collections", "OrderedDict"))
    untyped = Storage("UntypedStorage", "0", values.nbytes, module="torch.storage")
    obj = {
        "u16": Call(Global("torch._utils", "_rebuild_tensor_v3"), untyped, 1, (2,), (1,), False, hooks,
                    Global("torch", "uint16")),
        "by_dtype": tensor(Storage("int32", "1", 2), 0, (2,), (1,)),
        "dtype": Global("torch", "float16"),
    }
    raw = {"0": values.tobytes(), "1": np.array([5, -5], np.int32).tobytes()}
    got = read_without_torch(write_zip(tmp_path / "v3.pt", assemble(obj), raw))
    assert got["u16"].dtype == np.uint16 and got["u16"].tolist() == [65535, 300]
    assert got["by_dtype"].dtype == np.int32 and got["by_dtype"].tolist() == [5, -5]
    assert repr(got["dtype"]) == "torch.float16"


def test_plain_data_stand_ins(tmp_path):
    """Namespace, numpy scalars, sets, bytes, torch.Size: data only, never the real callables' effects."""
    f8 = Call(Global("numpy", "dtype"), "f8", False, True, state=(3, ">", None, None, None, -1, -1, 0))
    obj = {
        "args": Call(Global("argparse", "Namespace"), state={"lr": 0.1, "arch": "lvvit_s"}),
        "metric": Call(Global("numpy._core.multiarray", "scalar"), f8, struct.pack(">d", 83.3)),
        "old_numpy": Call(Global("numpy.core.multiarray", "scalar"), Call(Global("numpy", "dtype"), "i4"),
                          struct.pack("<i", -7)),
        "set": Call(Global("__builtin__", "set"), [1, 2]),
        "frozen": Call(Global("builtins", "frozenset"), [3]),
        "bytes": Call(Global("_codecs", "encode"), "\xffab", "latin1"),
        "empty_bytes": Call(Global("__builtin__", "bytes")),
        "complex": Call(Global("builtins", "complex"), 1.0, 2.0),
        "slice": Call(Global("builtins", "slice"), 1, 5),
        "size": Call(Global("torch", "Size"), [2, 3]),
        "ordered": Call(Global("collections", "OrderedDict"), [("b", 1), ("a", 2)]),
    }
    got = read_without_torch(write_zip(tmp_path / "data.pt", assemble(obj)))
    assert type(got["args"]) is types.SimpleNamespace and vars(got["args"]) == {"lr": 0.1, "arch": "lvvit_s"}
    assert type(got["metric"]) is np.float64 and got["metric"] == 83.3
    assert type(got["old_numpy"]) is np.int32 and got["old_numpy"] == -7
    assert np.dtype("f8").byteorder == "="  # the BUILD went to a private copy of the descriptor
    assert got["set"] == {1, 2} and got["frozen"] == frozenset({3})
    assert got["bytes"] == b"\xffab" and got["empty_bytes"] == b""
    assert got["complex"] == 1 + 2j and got["slice"] == slice(1, 5)
    assert got["size"] == (2, 3) and type(got["size"]) is tuple
    assert list(got["ordered"].items()) == [("b", 1), ("a", 2)]


def test_parameter_stand_ins(tmp_path):
    storage = Storage("HalfStorage", "0", 3)
    hooks = Call(Global("collections", "OrderedDict"))
    parameter = Global("torch._utils", "_rebuild_parameter")
    with_state = Global("torch._utils", "_rebuild_parameter_with_state")
    obj = {
        "weight": Call(parameter, tensor(storage, 0, (3,), (1,)), True, hooks),
        "tagged": Call(with_state, tensor(storage, 1, (2,), (1,)), True, hooks, {"tag": "x"}),
    }
    raw = {"0": np.array([1, 2, 3], np.float16).tobytes()}
    got = read_without_torch(write_zip(tmp_path / "param.pt", assemble(obj), raw))
    assert got["weight"].dtype == np.float16 and got["weight"].tolist() == [1, 2, 3]
    assert got["tagged"].tolist() == [2, 3]


def test_storage_is_read_once(tmp_path, monkeypatch):
    storage = Storage("FloatStorage", "0", 4)
    obj = [tensor(storage, i, (1,), (1,)) for i in range(4)]
    path = write_zip(tmp_path / "shared.pt", assemble(obj), {"0": np.arange(4, dtype=np.float32).tobytes()})
    opened = []
    real_open = zipfile.ZipFile.open

    def spy_open(self, name, *args, **kwargs):
        opened.append(getattr(name, "filename", name))
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy_open)
    assert [a.tolist() for a in read_without_torch(path)] == [[0], [1], [2], [3]]
    assert opened.count("archive/data/0") == 1


# ---------------------------------------------------------------------------------------------
# Hostile checkpoints: nothing may run.


@pytest.mark.parametrize("protocol", [2, 4])
def test_hostile_zip_checkpoint_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = {"state_dict": {"w": 1.0}, "exploit": Evil(os.system, f"touch {marker}")}
    path = write_zip(tmp_path / "evil.pt", pickle.dumps(payload, protocol=protocol))
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_torch_checkpoint(path)
    message = str(caught.value)
    assert any(f"{module}.system" in message for module in ("os", "posix", "nt"))
    assert str(path) in message and "Nothing from the file was executed" in message
    assert caught.value.global_name in ("os.system", "posix.system", "nt.system")
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name",
    [
        ("builtins", "eval"),
        ("__builtin__", "exec"),
        ("builtins", "getattr"),
        ("subprocess", "Popen"),
        ("nt", "system"),
        ("copyreg", "_reconstructor"),
        ("torch", "load"),
        ("torch._utils", "_rebuild_device_tensor_from_numpy"),
        ("numpy", "load"),
        ("torch.nn.modules.linear", "Linear"),
    ],
)
def test_globals_outside_the_allowlist_are_refused(tmp_path, module, name):
    marker = tmp_path / "pwned"
    path = write_zip(tmp_path / "evil.pt", assemble({"x": Call(Global(module, name), f"touch {marker}")}))
    with pytest.raises(UnsafeCheckpointError, match=f"'{module}.{name}'"):
        load_torch_checkpoint(path)
    assert not marker.exists()


def test_allowlisted_callables_are_stand_ins_not_torch(tmp_path, monkeypatch):
    """A checkpoint naming torch's rebuild functions never reaches them, even with torch loaded."""
    torch_utils = pytest.importorskip("torch._utils")
    marker = tmp_path / "called"

    def trap(*args, **kwargs):
        marker.touch()

    for name in ("_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter"):
        monkeypatch.setattr(torch_utils, name, trap)
    storage = Storage("FloatStorage", "0", 1)
    obj = Call(Global("torch._utils", "_rebuild_parameter"), tensor(storage, 0, (1,), (1,)), False,
               Call(Global("collections", "OrderedDict")))
    path = write_zip(tmp_path / "p.pt", assemble(obj), {"0": np.ones(1, np.float32).tobytes()})
    assert load_torch_checkpoint(path).tolist() == [1.0]
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj, problem",
    [
        (tensor(Storage("FloatStorage", "0", 4), 0, (10**9,), (1,)), "runs past its storage"),
        (tensor(Storage("FloatStorage", "0", 4), 3, (2,), (1,)), "runs past its storage"),
        (tensor(Storage("FloatStorage", "0", 4), 0, (2,), (-1,)), "non-negative"),
        (tensor(Storage("FloatStorage", "0", 4), 0, (2, 2), (1,)), "differ in length"),
        (tensor("not a storage", 0, (1,), (1,)), "storage"),
        (tensor(Storage("OrderedDict", "0", 4, module="collections"), 0, (1,), (1,)), "malformed storage"),
        (tensor(Storage("FloatStorage", "0", 99), 0, (1,), (1,)), "declares 16 bytes, its tensor needs 396"),
        (tensor(Storage("FloatStorage", "missing", 1), 0, (1,), (1,)), "'archive/data/missing' is missing"),
        ([tensor(Storage("FloatStorage", "0", 4), 0, (1,), (1,)),
          tensor(Storage("IntStorage", "0", 4), 0, (1,), (1,))], "both float32 and int32"),
        (Call(Global("numpy", "dtype"), "O"), "not a plain numeric type"),
        (Call(Global("numpy._core.multiarray", "scalar"), Call(Global("numpy", "dtype"), "f8"), 42),
         "malformed"),
        (Call(Global("_codecs", "encode"), "x", "rot13"), "latin-1"),
        (Call(Global("builtins", "bytes"), 10**12), "argument"),
    ],
)
def test_allowlisted_callables_with_hostile_arguments(tmp_path, obj, problem):
    path = write_zip(tmp_path / "bad.pt", assemble(obj), {"0": bytes(16)})
    with pytest.raises(CheckpointError, match=problem) as caught:
        load_torch_checkpoint(path)
    assert not isinstance(caught.value, UnsafeCheckpointError)
    assert str(path) in str(caught.value)


def test_hostile_plain_pickle_is_refused_before_torch(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Evil(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=r"(os|posix|nt)\.system"):
        load_torch_checkpoint(path)
    assert not marker.exists()


def test_hostile_legacy_checkpoint_without_torch(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_legacy.pt"
    path.write_bytes(legacy_header() + pickle.dumps(Evil(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(CheckpointError, match=r"legacy \(pre-1\.6\)"):
        read_without_torch(path)
    assert not marker.exists()


def test_hostile_legacy_checkpoint_goes_through_weights_only(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_legacy.pt"
    path.write_bytes(legacy_header() + pickle.dumps(Evil(os.system, f"touch {marker}"), protocol=2))
    calls = []
    real_load = torch.load

    def spy_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy_load)
    with pytest.raises(UnsafeCheckpointError, match=r"(os|posix|nt)\.system") as caught:
        load_torch_checkpoint(path)
    assert str(path) in str(caught.value)
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Files that are not checkpoints.


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).bytes(1000).replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint") as caught:
        load_torch_checkpoint(path)
    assert str(path) in str(caught.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        load_torch_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_torch_checkpoint(tmp_path / "nope.pt")


def test_truncated_zip(tmp_path):
    whole = write_zip(tmp_path / "whole.pt", assemble({"a": 1}), {"0": bytes(4096)}).read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as caught:
        load_torch_checkpoint(path)
    assert str(path) in str(caught.value)


def test_truncated_data_pkl(tmp_path):
    data_pkl = assemble({"a": list(range(100))})
    path = write_zip(tmp_path / "cut.pt", data_pkl[: len(data_pkl) // 2])
    with pytest.raises(CheckpointError, match="cannot read archive/data.pkl"):
        load_torch_checkpoint(path)


def test_zip_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="not a torch.save checkpoint"):
        load_torch_checkpoint(path)


def test_unknown_byteorder(tmp_path):
    path = write_zip(tmp_path / "odd.pt", assemble({}), byteorder=b"middle")
    with pytest.raises(CheckpointError, match="unknown byteorder"):
        load_torch_checkpoint(path)


def test_pickle_without_legacy_magic(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(CheckpointError, match="no legacy magic number"):
        load_torch_checkpoint(path)


def test_error_types():
    assert issubclass(UnsafeCheckpointError, CheckpointError) and issubclass(CheckpointError, ValueError)


# ---------------------------------------------------------------------------------------------
# Files written by torch.save, read back without torch and compared bit for bit.


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def assert_same(array, tensor_) -> None:
    """Bit-exact equality with torch's values (bfloat16 widened to float32, which is exact)."""
    import torch

    expected = tensor_.detach()
    expected = (expected.float() if expected.dtype == torch.bfloat16 else expected).contiguous().numpy()
    assert isinstance(array, np.ndarray)
    assert array.dtype == expected.dtype and array.shape == expected.shape
    assert array.tobytes() == expected.tobytes()


def test_torch_dtypes(torch, tmp_path):
    gen = torch.Generator().manual_seed(0)
    floats = torch.randn(5, 7, generator=gen)
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40, 3.0e38])
    tensors = {
        "float32": floats,
        "float16": floats.half(),
        "bfloat16": torch.cat([floats.flatten(), special]).bfloat16(),
        "float64": floats.double(),
        "int64": torch.randint(-(2**40), 2**40, (6,), generator=gen),
        "int32": torch.randint(-(2**31), 2**31 - 1, (6,), generator=gen, dtype=torch.int32),
        "int16": torch.randint(-(2**15), 2**15 - 1, (6,), generator=gen, dtype=torch.int16),
        "int8": torch.randint(-128, 127, (6,), generator=gen, dtype=torch.int8),
        "uint8": torch.randint(0, 255, (6,), generator=gen, dtype=torch.uint8),
        "bool": torch.randn(8, generator=gen) > 0,
        "uint16": torch.tensor([0, 1, 65535], dtype=torch.int32).to(torch.uint16),
        "uint32": torch.tensor([0, 2**32 - 1], dtype=torch.int64).to(torch.uint32),
        "uint64": torch.tensor([0, 2**62], dtype=torch.int64).to(torch.uint64),
        "complex64": torch.randn(3, generator=gen, dtype=torch.complex64),
        "requires_grad": torch.randn(3, generator=gen, requires_grad=True),
        "scalar": torch.tensor(2.5),
    }
    path = tmp_path / "dtypes.pt"
    torch.save(tensors, path)
    got = read_without_torch(path)
    assert list(got) == list(tensors)
    for name, value in tensors.items():
        assert_same(got[name], value)
    assert got["bfloat16"].dtype == np.float32


def test_torch_views_of_one_storage(torch, tmp_path):
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    views = {
        "base": base,
        "transposed": base[0].t(),
        "permuted": base.permute(2, 0, 1),
        "slice": base[1:, 1:3, ::2],
        "row": base[2, 3],
        "diagonal": base[0].diagonal(),
        "expanded": base[0, 0, :1].expand(4, 6),
        "bf16_a": base.bfloat16()[1],
    }
    views["bf16_b"] = views["bf16_a"].t()  # shares the bfloat16 storage
    path = tmp_path / "views.pt"
    torch.save(views, path)
    got = read_without_torch(path)
    for name, value in views.items():
        assert_same(got[name], value)
        assert got[name].flags.c_contiguous and got[name].flags.owndata
    assert not np.shares_memory(got["base"], got["slice"])


def test_torch_state_dicts(torch, tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2))
    state = model.state_dict()
    param = torch.nn.Parameter(torch.randn(2, 3))
    tagged = torch.nn.Parameter(torch.randn(2))
    tagged.tag = "with state"
    checkpoint = {
        "model": state,
        "epoch": 3,
        "args": argparse.Namespace(lr=0.1, arch="lvvit_s"),
        "params": [param, tagged],
        "size": torch.Size([2, 3]),
        "dtype": torch.float16,
    }
    path = tmp_path / "train.pt"
    torch.save(checkpoint, path)
    got = read_without_torch(path)
    assert type(got["model"]) is collections.OrderedDict and list(got["model"]) == list(state)
    for name, value in state.items():
        assert_same(got["model"][name], value)
    assert got["epoch"] == 3
    assert type(got["args"]) is types.SimpleNamespace and vars(got["args"]) == {"lr": 0.1, "arch": "lvvit_s"}
    assert_same(got["params"][0], param)
    assert_same(got["params"][1], tagged)
    assert got["size"] == (2, 3) and repr(got["dtype"]) == "torch.float16"


@pytest.mark.parametrize("protocol", [2, 4])
def test_torch_timm_style_checkpoint(torch, tmp_path, protocol):
    state = collections.OrderedDict(
        [("cls_token", torch.randn(1, 1, 8)), ("head.weight", torch.randn(10, 8).bfloat16())]
    )
    ema = collections.OrderedDict((k, v * 2) for k, v in state.items())
    checkpoint = {"state_dict": state, "state_dict_ema": ema, "arch": "lvvit_s", "metric": np.float64(83.3),
                  "best_top5": np.float32(96.25), "blob": b"\x00\xff", "tags": {"a", "b"}}
    path = tmp_path / "timm.pth.tar"
    torch.save(checkpoint, path, pickle_protocol=protocol)
    got = read_without_torch(path)
    for key in ("state_dict", "state_dict_ema"):
        for name, value in checkpoint[key].items():
            assert_same(got[key][name], value)
    assert got["arch"] == "lvvit_s"
    assert type(got["metric"]) is np.float64 and got["metric"] == 83.3
    assert type(got["best_top5"]) is np.float32 and got["best_top5"] == np.float32(96.25)
    assert got["blob"] == b"\x00\xff" and got["tags"] == {"a", "b"}


def test_torch_big_endian_file(torch, tmp_path):
    """A torch.save file rewritten as a big-endian machine would have written it."""
    tensors = {"f32": torch.randn(3, 2), "bf16": torch.randn(4).bfloat16(), "i64": torch.arange(-3, 3),
               "f16": torch.randn(5).half()}
    little = tmp_path / "little.pt"
    torch.save(tensors, little)
    itemsize = {str(key): value.element_size() for key, value in enumerate(tensors.values())}
    big = tmp_path / "big.pt"
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            folder, _, leaf = info.filename.rpartition("/")
            if leaf == "byteorder":
                data = b"big"
            elif folder.endswith("/data"):
                data = np.frombuffer(data, f"<u{itemsize[leaf]}").astype(f">u{itemsize[leaf]}").tobytes()
            dst.writestr(info.filename, data)
    assert all(torch.equal(torch.load(big)[k], v) for k, v in tensors.items())  # the fixture is right
    got = read_without_torch(big)
    for name, value in tensors.items():
        assert_same(got[name], value)


def test_torch_legacy_format(torch, tmp_path):
    base = torch.randn(4, 5)
    checkpoint = {
        "state_dict": collections.OrderedDict([("w", base), ("w_t", base.t()), ("b", base[1:, 2])]),
        "bf16": base.bfloat16(),
        "param": torch.nn.Parameter(torch.randn(3)),
        "epoch": 7,
        "shape": torch.Size([4, 5]),
    }
    path = tmp_path / "legacy.pt"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    got = load_torch_checkpoint(path)
    assert type(got["state_dict"]) is collections.OrderedDict
    for name, value in checkpoint["state_dict"].items():
        assert_same(got["state_dict"][name], value)
        assert got["state_dict"][name].flags.owndata
    assert_same(got["bf16"], checkpoint["bf16"])
    assert_same(got["param"], checkpoint["param"])
    assert got["epoch"] == 7 and got["shape"] == (4, 5) and type(got["shape"]) is tuple

    with pytest.raises(CheckpointError) as caught:
        read_without_torch(path)
    message = str(caught.value)
    assert str(path) in message and "legacy (pre-1.6)" in message and "pip install torch" in message
    assert "torch.save(torch.load(f, weights_only=True), g)" in message


def test_torch_truncated_legacy_file(torch, tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.randn(100)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:120])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as caught:
        load_torch_checkpoint(path)
    assert not isinstance(caught.value, UnsafeCheckpointError)


def test_torch_whole_module_is_refused(torch, tmp_path):
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(UnsafeCheckpointError, match="torch.nn.modules.linear.Linear"):
        read_without_torch(path)
