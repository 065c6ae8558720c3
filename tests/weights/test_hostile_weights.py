"""Hostile and broken weights, checkpoints and servers.

Each case makes the file or server behaviour itself and asserts: nothing ran, nothing hung (a
timeout on the subprocess or the call), memory stayed bounded (RLIMIT_AS in a subprocess: 1 GiB
above what the interpreter had mapped after importing ppim), nothing was lost, and the message
names the cause.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import paddle
import pytest
import torch

import ppim
from ppim import registry, weights
from http_server import LocalServer
from test_torch_reader import Storage, assemble, tensor, write_zip
from tiny import tiny_kwargs

ROOT = Path(__file__).resolve().parents[2]
TINY = tiny_kwargs()


def tiny(**kwargs):
    return ppim.lvvit_s(**{**TINY, **kwargs})


def random_state(model, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in model.state_dict().items()}


def torch_file(path: Path, target, state: dict = None, **container) -> Path:
    """A torch.save zip of a Paddle-layout ``state`` (or of ``container`` entries) for the model
    ``target``: its Linear weights transposed to PyTorch's [out, in]."""
    linear = {f"{n}.weight" for n, layer in target.named_sublayers() if isinstance(layer, paddle.nn.Linear)}

    def to_torch(s: dict) -> dict:
        return {k: torch.from_numpy(np.ascontiguousarray(v.T) if k in linear else v) for k, v in s.items()}

    torch.save(to_torch(state) if state is not None else {k: to_torch(s) for k, s in container.items()}, path)
    return path


# ---------------------------------------------------------------------------------------------
# Scope 1: untrusted files, read in a subprocess with bounded memory and time.

CHILD = textwrap.dedent("""
    import json, os, resource, sys, time
    sys.path.insert(0, sys.argv[1])
    from ppim import weights
    from ppim.errors import PpimError
    status = open("/proc/self/status").read().split("VmSize:")[1].split()[0]
    limit = int(status) * 1024 + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for name in sys.argv[3:]:
        path = os.path.join(sys.argv[2], name)
        start = time.monotonic()
        try:
            if name.endswith(".pdparams"):
                weights.read_weights(path)
            else:
                weights.read_weights(path, model=object(), max_bytes=64 << 20)
            outcome, message = "loaded", ""
        except PpimError as e:
            outcome, message = "error", str(e)
        except BaseException as e:
            outcome, message = "other", f"{type(e).__name__}: {e}"[:2000]
        print(json.dumps({"name": name, "outcome": outcome, "message": message[:2000],
                          "seconds": time.monotonic() - start}), flush=True)
""")


def billion_laughs() -> bytes:
    """196 bytes: ten lists each holding the previous one ten times (10**9 leaves if expanded)."""
    out = bytearray(b"\x80\x02]q\x00")
    for level in range(1, 10):
        out += b"](" + (b"h" + bytes([level - 1])) * 10 + b"eq" + bytes([level])
    return bytes(out) + b"."


def hostile_files(folder: Path) -> "dict[str, str]":
    """name -> the words the refusal must contain."""
    cases = {}

    def add(name: str, data: bytes, expect: str) -> None:
        (folder / name).write_bytes(data)
        cases[name] = expect

    # Nesting: 300 KB of tuples, of lists, of MARKs (the C unpickler's stack would take them all).
    add("deep_tuples.pdparams", b"\x80\x02N" + b"\x85" * 300_000 + b".", "nest deeper")
    add("deep_lists.pdparams", b"\x80\x02" + b"]" * 150_000 + b"a" * 149_999 + b".", "nest deeper")
    add("deep_marks.pdparams", b"\x80\x02" + b"(" * 300_000 + b".", "marks")
    add("laughs.pdparams", billion_laughs(), "not a dict of weights")
    # 107 bytes: a dict whose key is 33 levels of (x, x, x) (DUP DUP TUPLE3), 3**33 values to hash;
    # and one 3**12-value tuple used as a key 20000 times.
    add("laughs_key.pdparams", b"\x80\x02}N" + b"22\x87" * 33 + b"K\x00s.", "billion laughs")
    add("laughs_rekey.pdparams", b"\x80\x02}N" + b"22\x87" * 12 + b"q\x00K\x00s" + b"h\x00K\x00s" * 20000 + b".",
        "billion laughs")
    # Length fields far beyond the file: bytes, a frame, a string.
    add("huge_bytes.pdparams", b"\x80\x04\x8e" + struct.pack("<Q", 1 << 60) + b"x" * 10, "not a readable")
    add("huge_frame.pdparams", b"\x80\x04\x95" + struct.pack("<Q", 1 << 60) + b"N.", "not a dict of weights")
    add("huge_str.pdparams", b"\x80\x02X" + struct.pack("<I", 0xFFFFFFF0) + b"abc", "not a readable")
    # numpy's array rebuilder asked for a huge empty array, and a dtype changed through BUILD.
    add("reconstruct.pdparams", b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        b"J\x00\xca\x9a;\x85C\x01b\x87R.", "malformed numpy array record")
    add("dtype_build.pdparams", b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f4\x89\x89\x87R"
        b"(K\x03X\x01\x00\x00\x00>NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb.", "loaded-or-error")
    # A stride-0 view of one float as 40000 x 40000 (6.4 GB), and storage members lying about size.
    view = tensor(Storage("FloatStorage", "0", 1), 0, (40000, 40000), (0, 0))
    write_zip(folder / "stride0.pth", assemble({"w": view}), {"0": bytes(4)})
    cases["stride0.pth"] = "more than the 67108864 bytes"
    lying = tensor(Storage("FloatStorage", "0", 1 << 28), 0, (1 << 28,), (1,))
    write_zip(folder / "short_member.pth", assemble({"w": lying}), {"0": bytes(16)})
    cases["short_member.pth"] = "more than the 67108864 bytes"
    # A zip bomb: 256 MiB of zeros deflated to ~256 KB, declared honestly, for a 256 MiB tensor.
    bomb = folder / "bomb.pth"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", assemble(
            {"w": tensor(Storage("FloatStorage", "0", 1 << 26), 0, (1 << 26,), (1,))}))
        with archive.open("archive/data/0", "w") as member:
            zeros = bytes(64 << 20)
            for _ in range(4):
                member.write(zeros)
    cases["bomb.pth"] = "more than the 67108864 bytes"
    # BUILD on the allow-list's shared stand-in for torch.float32 (would change how every later
    # file in the process decodes float32).
    write_zip(folder / "shared_build.pth", b"\x80\x02ctorch\nfloat32\n}X\t\x00\x00\x00stored_as"
              b"ctorch\nfloat64\nsb.")
    cases["shared_build.pth"] = "did not create"
    # A web page saved under a weights name, and a .pdparams named .pth.
    add("page.pth", b"<!DOCTYPE html><html><body>Sign in</body></html>", "web page")
    return cases


def test_hostile_files_are_refused_within_bounded_memory_and_time(tmp_path):
    cases = hostile_files(tmp_path)
    names = sorted(cases)
    result = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(tmp_path), *names],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])  # no SIGSEGV, no MemoryError exit
    outcomes = {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert sorted(outcomes) == names
    for name, expect in cases.items():
        row = outcomes[name]
        assert row["seconds"] < 60, row  # nothing hangs (generous for a loaded machine)
        if expect == "loaded-or-error":
            assert row["outcome"] in ("loaded", "error"), row
            continue
        assert row["outcome"] == "error", row
        assert expect in row["message"] and name in row["message"], row  # names the file and the cause


@pytest.mark.smoke
def test_shared_stand_ins_are_never_changed(tmp_path):
    """After a hostile file tried BUILD on torch.float32's stand-in, float32 still decodes right."""
    write_zip(tmp_path / "evil.pth", b"\x80\x02ctorch\nfloat32\n}X\t\x00\x00\x00stored_as"
              b"ctorch\nfloat64\nsb.")
    with pytest.raises(weights.CheckpointError, match="did not create"):
        weights.load_torch_checkpoint(tmp_path / "evil.pth")
    expected = np.arange(6, dtype=np.float32).reshape(2, 3)
    torch.save({"w": torch.from_numpy(expected)}, tmp_path / "good.pth")
    np.testing.assert_array_equal(weights.load_torch_checkpoint(tmp_path / "good.pth")["w"], expected)


def test_expanded_tensor_within_budget_still_loads(tmp_path):
    torch.save({"w": torch.arange(3.0).expand(4, 3)}, tmp_path / "expand.pth")
    got = weights.load_torch_checkpoint(tmp_path / "expand.pth")["w"]
    np.testing.assert_array_equal(got, np.tile(np.arange(3.0, dtype=np.float32), (4, 1)))


@pytest.mark.smoke  # paddle.save / torch.save files as Paddle 2.6's numpy writes them
def test_format_is_told_by_bytes_not_name(tmp_path):
    model = tiny()
    state = random_state(model)
    paddle.save(state, str(tmp_path / "really_pdparams.pth"))
    loaded = tiny(pretrained=str(tmp_path / "really_pdparams.pth"))
    np.testing.assert_array_equal(loaded.state_dict()["cls_token"].numpy(), state["cls_token"])


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_half_and_double_pdparams_load_into_a_float32_model(tmp_path, dtype):
    model = tiny()
    state = {k: v.astype(dtype) for k, v in random_state(model).items()}
    paddle.save(state, str(tmp_path / "w.pdparams"))
    loaded = tiny(pretrained=str(tmp_path / "w.pdparams"))
    got = loaded.state_dict()["pos_embed"]
    assert got.dtype == paddle.float32
    np.testing.assert_array_equal(got.numpy(), state["pos_embed"].astype(np.float32))


def test_non_string_keys_are_named(tmp_path):
    path = tmp_path / "w.pdparams"
    with open(path, "wb") as f:
        pickle.dump({3: np.zeros(2, np.float32)}, f, protocol=2)
    with pytest.raises(weights.InvalidWeightsError, match=r"w\.pdparams.*key 3 that is not a string"):
        weights.read_weights(path)


@pytest.mark.smoke  # paddle.save / torch.save files as Paddle 2.6's numpy writes them
def test_training_checkpoint_gives_model_or_ema_weights(tmp_path):
    model = tiny()
    plain, ema = random_state(model, 1), random_state(model, 2)
    opt = {"linear_0.w_0_moment1_0": ("m", np.zeros(3, np.float32)), "LR_Scheduler": {"last_epoch": 3}}
    path = tmp_path / "train.pdparams"
    paddle.save({"model": plain, "ema": ema, "optimizer": opt, "epoch": 7,
                 "args": {"lr": 0.1, "name": "x", "milestones": [1, 2]}}, str(path))
    selected = weights.read_weights(path, ema=False)
    assert selected.entry == "model" and not selected.ema
    np.testing.assert_array_equal(selected.state["pos_embed"], plain["pos_embed"])
    selected = weights.read_weights(path, ema=None, prefer_ema=True)
    assert selected.entry == "ema" and selected.ema
    np.testing.assert_array_equal(selected.state["pos_embed"], ema["pos_embed"])
    loaded = tiny(pretrained=str(path))  # lvvit_s prefers the model weights
    np.testing.assert_array_equal(loaded.state_dict()["pos_embed"].numpy(), plain["pos_embed"])
    assert loaded.pretrained_info["entry"] == "model" and loaded.pretrained_info["ema"] is False


def test_super_lvvit_s_prefers_its_ema_weights_and_says_so(tmp_path, capsys):
    kwargs = dict(embed_dim=48, depth=2, num_heads=3, stem_dim=8)
    model = ppim.super_lvvit_s(**kwargs)
    assert ppim.get_model_cfg("super_lvvit_s")["weights"]["prefer_ema"] is True
    plain, ema = random_state(model, 1), random_state(model, 2)
    torch_file(tmp_path / "s.pth", model, model=plain, model_ema=ema)
    loaded = ppim.super_lvvit_s(pretrained=str(tmp_path / "s.pth"), **kwargs)
    np.testing.assert_array_equal(loaded.state_dict()["cls_token"].numpy(), ema["cls_token"])
    assert loaded.pretrained_info["entry"] == "model_ema" and loaded.pretrained_info["ema"] is True
    assert "EMA weights ('model_ema')" in capsys.readouterr().err
    # The converter follows the cfg too, and --no-ema (ema=False) overrides it.
    report = weights.convert_file(tmp_path / "s.pth", tmp_path / "ema.pdparams", ppim.super_lvvit_s(**kwargs))
    assert report.entry == "model_ema" and report.ema and "EMA weights" in str(report)
    report = weights.convert_file(tmp_path / "s.pth", tmp_path / "plain.pdparams",
                                  ppim.super_lvvit_s(**kwargs), ema=False)
    assert report.entry == "model" and not report.ema
    np.testing.assert_array_equal(weights.read_pdparams(tmp_path / "plain.pdparams")["cls_token"],
                                  plain["cls_token"])


def test_checkpoint_path_is_an_alias_of_a_local_pretrained_path(tmp_path):
    state = random_state(tiny())
    paddle.save(state, str(tmp_path / "w.pdparams"))
    model = tiny(checkpoint_path=str(tmp_path / "w.pdparams"))
    np.testing.assert_array_equal(model.state_dict()["cls_token"].numpy(), state["cls_token"])
    with pytest.raises(ValueError, match="disagree"):
        tiny(pretrained=str(tmp_path / "other.pdparams"), checkpoint_path=str(tmp_path / "w.pdparams"))


# ---------------------------------------------------------------------------------------------
# Scope 2: a cache that cannot be fooled.


def test_urls_ending_in_the_same_name_are_different_entries():
    with LocalServer() as server:
        server.add("/a/w.pdparams", b"\x80\x02A")
        server.add("/b/w.pdparams", b"\x80\x02B")
        first = weights.download_to_cache(server.url("/a/w.pdparams"), progress=False)
        second = weights.download_to_cache(server.url("/b/w.pdparams"), progress=False)
    assert first != second and first.read_bytes() == b"\x80\x02A" and second.read_bytes() == b"\x80\x02B"


def test_a_server_naming_a_registered_file_cannot_replace_it(monkeypatch):
    model = tiny()
    real, fake = random_state(model, 1), random_state(model, 2)
    buffers = {}
    for name, state in (("real", real), ("fake", fake)):
        path = weights.weights_dir().parent / f"{name}.pdparams"
        path.parent.mkdir(parents=True, exist_ok=True)
        paddle.save(state, str(path))
        buffers[name] = path.read_bytes()
    with LocalServer() as server:
        server.add("/real/lvvit_s_224.pdparams", buffers["real"])
        server.add("/blob", buffers["fake"],
                   headers={"Content-Disposition": "attachment; filename=lvvit_s_224.pdparams"})
        monkeypatch.setitem(registry._CFGS["lvvit_s"]["weights"], "url", server.url("/real/lvvit_s_224.pdparams"))
        tiny(pretrained=server.url("/blob?id=1"))  # the hostile server's answer goes under its own URL
        loaded = tiny(pretrained=True)
    np.testing.assert_array_equal(loaded.state_dict()["pos_embed"].numpy(), real["pos_embed"])


def test_replaced_checkpoint_of_same_size_and_mtime_is_converted_again(tmp_path):
    model = tiny()
    first, second = random_state(model, 1), random_state(model, 2)
    source = torch_file(tmp_path / "w.pth", model, first)
    stamp = source.stat()
    tiny(pretrained=str(source))
    torch_file(source, model, second)
    os.utime(source, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert source.stat().st_size == stamp.st_size
    loaded = tiny(pretrained=str(source))
    np.testing.assert_array_equal(loaded.state_dict()["pos_embed"].numpy(), second["pos_embed"])


def test_sidecar_beside_a_local_file_is_verified(tmp_path):
    model = tiny()
    source = torch_file(tmp_path / "w.pth", model, random_state(model))
    weights.convert_file(source, tmp_path / "w.pdparams", tiny())
    data = bytearray((tmp_path / "w.pdparams").read_bytes())
    data[-20] ^= 1  # a flipped bit inside an array
    (tmp_path / "w.pdparams").write_bytes(bytes(data))
    with pytest.raises(weights.CorruptWeightsError, match=r"w\.pdparams is corrupt or was replaced"):
        tiny(pretrained=str(tmp_path / "w.pdparams"))
    (tmp_path / "w.pdparams.sha256").write_text("not a hash\n")
    with pytest.raises(weights.CorruptWeightsError, match=r"sidecar .*w\.pdparams\.sha256.* is garbled"):
        tiny(pretrained=str(tmp_path / "w.pdparams"))


def test_convert_file_never_overwrites_its_source(tmp_path):
    source = torch_file(tmp_path / "w.pth", tiny(), random_state(tiny()))
    before = source.read_bytes()
    with pytest.raises(weights.CheckpointError, match="is the source checkpoint itself"):
        weights.convert_file(source, source, tiny())
    assert source.read_bytes() == before


def test_unwritable_cache_still_loads_a_local_checkpoint(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("PPIM_HOME", str(tmp_path / "file" / "home"))  # cannot be created: ENOTDIR
    state = random_state(tiny())
    source = torch_file(tmp_path / "w.pth", tiny(), state)
    with pytest.warns(UserWarning, match="could not cache the conversion"):
        loaded = tiny(pretrained=str(source))
    np.testing.assert_array_equal(loaded.state_dict()["pos_embed"].numpy(), state["pos_embed"])


def test_stale_part_files_of_dead_processes_are_removed():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = hashlib.sha1(__import__("socket").gethostname().encode()).hexdigest()[:8]
    folder = weights.weights_dir()
    folder.mkdir(parents=True)
    stale = folder / f".w.pdparams.{dead}-{host}.abc123.part"
    alive = folder / f".w.pdparams.{os.getpid()}-{host}.def456.part"
    stale.write_bytes(b"half")
    alive.write_bytes(b"in progress")
    with LocalServer() as server:
        server.add("/w.pdparams", b"\x80\x02weights")
        weights.download_to_cache(server.url("/w.pdparams"), "w.pdparams", progress=False)
    assert not stale.exists() and alive.exists()


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_downloads_and_conversions_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with LocalServer() as server:
            server.add("/w.pdparams", b"\x80\x02weights")
            path = weights.download_to_cache(server.url("/w.pdparams"), "w.pdparams", progress=False)
        out = tmp_path / "c.pdparams"
        weights.convert_file(torch_file(tmp_path / "c.pth", tiny(), random_state(tiny())), out, tiny())
    finally:
        os.umask(old)
    for made in (path, path.with_name(path.name + ".sha256"), out):
        assert made.stat().st_mode & 0o777 == 0o666 & ~umask, made


def test_a_trickling_server_meets_the_deadline():
    with LocalServer() as server:
        server.add("/w.pdparams", b"\x80\x02" + bytes(1000), drip=0.2)
        start = time.monotonic()
        with pytest.raises(weights.WeightsDownloadError, match="did not finish in the time allowed"):
            weights.download_to_cache(server.url("/w.pdparams"), "w.pdparams", progress=False, deadline=1.5)
        assert time.monotonic() - start < 20
    assert not [p for p in weights.weights_dir().iterdir() if not p.name.endswith(".lock")]


def test_html_answers_are_told_early_and_read_bounded():
    page = b"<!DOCTYPE html><html>" + b"<form " * 2_000_000  # 12 MB of a regex-quadratic pattern
    with LocalServer() as server:
        server.add("/uc", page, content_type="text/html")
        server.add("/plain", page, content_type="application/octet-stream")
        start = time.monotonic()
        with pytest.raises(weights.WeightsDownloadError, match="web page instead of the file"):
            weights.download_to_cache(server.url("/uc"), "w.pth", progress=False, retries=0)
        with pytest.raises(weights.WeightsDownloadError, match="answered with a web page"):
            weights.download_to_cache(server.url("/plain"), "v.pth", progress=False, retries=0)
        assert time.monotonic() - start < 30


def test_google_drive_error_says_how_to_fetch_by_hand(monkeypatch):
    with LocalServer() as server:
        server.add("/uc", b"<html>Quota exceeded</html>", content_type="text/html")
        monkeypatch.setitem(registry._CFGS["super_deit_s"]["weights"], "url", server.url("/uc?export=download&id=1y2"))
        with pytest.raises(weights.WeightsDownloadError) as caught:
            ppim.super_deit_s(pretrained=True, embed_dim=48, depth=2, num_heads=3)
    message = str(caught.value)
    target = weights.weights_dir() / "super_deit_s.pth"
    assert "https://drive.google.com/file/d/1y2-zU5UvHqGCmWEB41VLbnf7B27BatBL/view" in message
    assert f"save it as exactly {target}" in message and "super_deit_s.pth" in message


LOCK_HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from ppim.weights.cache import file_lock
    with file_lock(Path(sys.argv[2])):
        print("locked", flush=True)
        time.sleep(120)
""")


def test_a_stopped_lock_holder_is_named_and_the_wait_ends(monkeypatch):
    folder = weights.weights_dir()
    folder.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(ROOT), str(folder / "w.pdparams.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        os.kill(holder.pid, signal.SIGSTOP)
        monkeypatch.setenv("PPIM_LOCK_TIMEOUT", "1")
        with LocalServer() as server:
            server.add("/w.pdparams", b"\x80\x02weights")
            with pytest.raises(weights.WeightsError) as caught:
                weights.download_to_cache(server.url("/w.pdparams"), "w.pdparams", progress=False)
        message = str(caught.value)
        assert f"process {holder.pid} on" in message and "PPIM_LOCK_TIMEOUT" in message
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.wait(timeout=30)
