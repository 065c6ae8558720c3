"""Export for Paddle Inference (paddle.jit.save + ppim.json) and the graph rewrites it applies.

    export(model, "out/lvvit_s")      # out/lvvit_s/{model.json|model.pdmodel, model.pdiparams, ppim.json}

Paddle 2.6 writes the legacy program (model.pdmodel), Paddle 3.x a PIR program (model.json); both are
found and loaded the same way.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..builder import MODEL_KEY, describe_model
from ..fileio import current_umask, write_atomic, write_json
from ..weights.cache import ppim_home
from ..layers import Attention
from ..registry import cfg_for_img_size, model_name
from ..subnet import current_subnet
from .common import INPUT_NAME, MANIFEST, PARAMS_FILE, PROGRAM_FILES, input_size

__all__ = ["export", "load_manifest", "cached_export", "export_key", "cache_dir"]

# Bumped whenever the rewrites below change the exported graph, so cached exports are remade.
EXPORT_REVISION = 4


class _DeployAttention(nn.Layer):
    """Attention, numerically ``layers.Attention`` in eval mode, laid out for Paddle Inference's oneDNN
    passes: q, k and v are three Linear layers (the columns of qkv; the q scale folded into q's
    weights, exact for power-of-two scales; a zero bias when the model has none, so each is an fc
    GEMM), and each head split is reshape -> transpose -> matmul, and the merge matmul -> transpose
    -> reshape, which the passes fold into the matmuls' memory layouts. The transposes and slices
    of the packed qkv tensor, about 5% of lvvit_s's bf16 time, disappear. Export only; the model
    itself is never changed."""

    def __init__(self, attn: nn.Layer):
        super().__init__()
        self.num_heads, self.head_dim = attn.num_heads, attn.head_dim
        dim = self.num_heads * self.head_dim
        weight = attn.qkv.weight.numpy().astype("float32").copy()
        bias = (attn.qkv.bias.numpy().astype("float32").copy() if attn.qkv.bias is not None
                else np.zeros([3 * dim], dtype="float32"))
        weight[:, :dim] *= np.float32(attn.scale)
        bias[:dim] *= np.float32(attn.scale)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        for index, layer in enumerate((self.q, self.k, self.v)):
            layer.weight.set_value(np.ascontiguousarray(weight[:, index * dim:(index + 1) * dim]))
            layer.bias.set_value(np.ascontiguousarray(bias[index * dim:(index + 1) * dim]))
        self.proj = attn.proj

    def forward(self, x: paddle.Tensor, return_attention: bool = False):
        tokens, dim = x.shape[1], x.shape[2]
        heads = [-1, tokens, self.num_heads, self.head_dim]
        q = self.q(x).reshape(heads).transpose([0, 2, 1, 3])
        k = self.k(x).reshape(heads).transpose([0, 2, 1, 3])
        v = self.v(x).reshape(heads).transpose([0, 2, 1, 3])
        attn = F.softmax(paddle.matmul(q, k, transpose_y=True), axis=-1)
        out = paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([-1, tokens, dim])
        out = self.proj(out)
        return (out, attn) if return_attention else out


class _FusedAttention(nn.Layer):
    """Attention as one qkv fc GEMM and Paddle's CPU ``self_dp_attention`` op (scores, softmax and
    the weighted sum of v in one kernel, the scale applied to the scores), numerically
    ``layers.Attention`` in eval mode. About 1.4x faster than the matmul/softmax/matmul chain in
    fp32 on lvvit_s's shapes; it has no bf16 kernel (fp32 exports only) and no GPU kernel. A call
    that needs the probabilities (SuperViT's token keeping) gets the cls query's row of them only,
    all that token keeping reads."""

    def __init__(self, attn: nn.Layer):
        super().__init__()
        self.attn = attn
        self.num_heads, self.head_dim, self.scale = attn.num_heads, attn.head_dim, float(attn.scale)
        self.qkv = attn.qkv
        if attn.qkv.bias is None:  # a zero bias makes it an fc GEMM (a bias-less Linear stays a slower matmul)
            dim = attn.qkv.weight.shape[0]
            self.qkv = nn.Linear(dim, 3 * dim)
            self.qkv.weight.set_value(attn.qkv.weight)
            self.qkv.bias.set_value(np.zeros([3 * dim], dtype="float32"))

    def forward(self, x: paddle.Tensor, return_attention: bool = False):
        tokens, dim = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape([-1, tokens, 3, self.num_heads, self.head_dim])
        out = paddle._C_ops.self_dp_attention(qkv, self.scale, self.num_heads)  # (B, N, heads, head_dim)
        out = self.attn.proj(out.reshape([-1, tokens, dim]))
        if not return_attention:
            return out
        # Token keeping reads only the cls query's row of the probabilities: (B, heads, 1, N)
        # instead of the N x N matrix.
        q_cls = qkv[:, :1, 0].transpose([0, 2, 1, 3]) * self.scale  # (B, heads, 1, head_dim)
        keys = qkv[:, :, 1].transpose([0, 2, 3, 1])  # (B, heads, head_dim, N)
        return out, F.softmax(paddle.matmul(q_cls, keys), axis=-1)


def attention_layout(precision: str = "fp32", device: str = "cpu", engine: str = "inference") -> str:
    """The attention layout an optimised export uses: 'fused' (_FusedAttention) for Paddle Inference
    fp32 on CPU where Paddle has the op, else 'matmul' (_DeployAttention: bf16 runs it faster, the
    fused kernel being fp32 only, and paddle2onnx converts it for the other engines)."""
    fused = engine == "inference" and precision == "fp32" and device == "cpu" and fused_attention_available()
    return "fused" if fused else "matmul"


def fused_attention_available() -> bool:
    """Paddle 3.x (PIR programs) with the ``self_dp_attention`` CPU op."""
    if getattr(paddle.framework, "in_pir_mode", None) is None or not hasattr(paddle._C_ops, "self_dp_attention"):
        return False
    try:
        return bool(paddle.get_flags("FLAGS_enable_pir_api").get("FLAGS_enable_pir_api", False))
    except ValueError:  # a Paddle without the flag: no PIR programs
        return False


def _resize_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of a 1-D bilinear resize with align_corners=True: row i mixes the two source
    pixels around i * (src - 1) / (dst - 1)."""
    matrix = np.zeros((dst, src), dtype=np.float64)
    ratio = (src - 1) / (dst - 1) if dst > 1 else 0.0
    for i in range(dst):
        pos = ratio * i
        lo = min(int(math.floor(pos)), src - 1)
        hi = min(lo + 1, src - 1)
        frac = pos - lo
        matrix[i, lo] += 1.0 - frac
        matrix[i, hi] += frac
    return matrix.astype("float32")


class _DeployResize(nn.Layer):
    """Wraps a super model for export: the bilinear (align_corners=True) resize of the input to the
    sub-network's size as two GEMMs with fixed interpolation matrices (R x R^T per channel), so the
    model sees its own size and skips F.interpolate, whose oneDNN kernel Paddle 3.x Inference cannot
    run (ArrayAttribute<DoubleAttribute> in onednn_instruction)."""

    def __init__(self, model: nn.Layer, src: int, dst: int):
        super().__init__()
        self.model = model
        matrix = _resize_matrix(src, dst)
        self.resize_rows = self.create_parameter(list(matrix.shape),
                                                 default_initializer=nn.initializer.Assign(matrix))
        self.resize_cols = self.create_parameter(list(matrix.T.shape),
                                                 default_initializer=nn.initializer.Assign(matrix.T.copy()))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.model(paddle.matmul(paddle.matmul(self.resize_rows, x), self.resize_cols))


def _attention_layers(model: nn.Layer) -> List[Tuple[nn.Layer, str, nn.Layer]]:
    """(parent, attribute name, layer) of every ppim Attention in the model."""
    found = []
    for parent in [model] + list(model.sublayers()):
        for name, child in parent.named_children():
            if type(child) is Attention:
                found.append((parent, name, child))
    return found


@contextlib.contextmanager
def _deploy_layout(model: nn.Layer, layout: Optional[str]):
    """Swap every Attention for its export ``layout`` ('fused': _FusedAttention, 'matmul':
    _DeployAttention, None: none) while the block runs (export only)."""
    swapped = []
    try:
        if layout:
            for parent, name, attn in _attention_layers(model):
                deploy = _FusedAttention(attn) if layout == "fused" else _DeployAttention(attn)
                deploy.eval()
                setattr(parent, name, deploy)
                swapped.append((parent, name, attn))
        yield layout if swapped else None
    finally:
        for parent, name, attn in swapped:
            setattr(parent, name, attn)


@contextlib.contextmanager
def _preserve_forwards(model: nn.Layer):
    """Undo what tracing leaves on the layers: Paddle 2.x's convert_call replaces a called sublayer's
    ``forward`` by its converted function (an instance attribute), which breaks a later export of
    that layer on its own."""
    layers = [model] + list(model.sublayers())
    before = [(layer, layer.__dict__.get("forward", None), "forward" in layer.__dict__) for layer in layers]
    try:
        yield
    finally:
        for layer, forward, had in before:
            if had:
                layer.__dict__["forward"] = forward
            else:
                layer.__dict__.pop("forward", None)


def program_file(model_dir: Path) -> Path:
    for name in PROGRAM_FILES:
        if (model_dir / name).is_file():
            return model_dir / name
    raise FileNotFoundError(f"{model_dir} holds no exported program ({' or '.join(PROGRAM_FILES)}); "
                            f"export one with ppim.deploy.export or tools/export.py")


def add_file(model_dir: Path, name: str, data: bytes) -> Path:
    """Add a file ppim made (e.g. the ONNX conversion) to an export: written atomically, then listed
    in the manifest's files, so a later export over this one removes it."""
    write_atomic(model_dir / name, data)
    manifest = load_manifest(model_dir)
    files = set(_ppim_files(model_dir)) | {name}
    manifest["files"] = sorted(files)
    write_json(model_dir / MANIFEST, manifest)
    return model_dir / name


def _ppim_files(model_dir: Path) -> List[str]:
    """Names of the files ppim wrote into an export directory, from its manifest (exports made
    before the manifest listed them: the program, the params and the manifest)."""
    manifest = load_manifest(model_dir)
    if "files" in manifest:
        return [str(name) for name in manifest["files"]]
    return [name for name in (manifest.get("program_file"), manifest.get("params_file"), MANIFEST) if name]


def _publish(staged: Path, target: Path) -> None:
    """Move the finished export ``staged`` to ``target``.

    A missing or empty ``target`` is replaced by one rename: the export appears whole. Over a previous
    export, each new file replaces its namesake atomically (the manifest last, so a reader never sees
    a manifest naming files not there yet), then the files the previous export listed and this one
    does not write are removed; files ppim did not write stay. Everything gets the user's umask
    (mkdtemp makes 0700 directories and mkstemp 0600 files)."""
    mask = current_umask()
    for path in staged.iterdir():
        os.chmod(path, 0o666 & ~mask)
    os.chmod(staged, 0o777 & ~mask)
    try:
        os.rename(staged, target)  # atomic; replaces an empty directory
        return
    except OSError:
        if not (target / MANIFEST).is_file():
            raise
    previous = set(_ppim_files(target))
    names = sorted((p.name for p in staged.iterdir()), key=lambda name: name == MANIFEST)
    for name in names:
        os.replace(staged / name, target / name)
    for name in previous - set(names):
        if os.path.basename(name) == name:  # a name the manifest lists, never a path elsewhere
            with contextlib.suppress(FileNotFoundError):
                (target / name).unlink()


@contextlib.contextmanager
def staged_dir(output_dir: Path) -> Iterator[Path]:
    """A fresh directory beside ``output_dir`` for the block to fill, then published into it (see
    _publish); removed when the block fails, so nothing half-written is ever seen."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    try:
        yield tmp
        _publish(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a rename; what is left after a failure


def check_output_dir(output_dir: Path, sources: Sequence[Union[str, os.PathLike]] = ()) -> Path:
    """``output_dir`` as an absolute path if an export may be written there: absent, an empty
    directory or a previous ppim export, and none of ``sources`` (the files the model came from)."""
    output_dir = Path(output_dir).absolute()
    for source in sources:
        if source and os.path.exists(source) and (
                output_dir == Path(source).absolute() or (output_dir.exists() and output_dir.samefile(source))):
            raise ValueError(f"the export output {output_dir} is the model's own input {source}: choose "
                             f"another output directory")
    for parent in output_dir.parents:  # "a_file/sub": say which part is in the way
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{parent} is a file, so {output_dir} cannot be created; "
                                         f"choose another output directory")
            break
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} is a file, not a folder; choose another output directory")
    if output_dir.exists() and not ((output_dir / MANIFEST).is_file() or not any(output_dir.iterdir())):
        raise FileExistsError(f"{output_dir} is a folder of other files, not a ppim export; choose another "
                              f"output directory")
    return output_dir


def export(model: nn.Layer, output_dir: Union[str, os.PathLike], img_size: Optional[int] = None,
           batch_size: Optional[int] = None, optimize: bool = True, precision: str = "fp32", device: str = "cpu",
           engine: str = "inference", sources: Sequence[Union[str, os.PathLike]] = (), cache_key: Optional[str] = None) -> Path:
    """Save ``model`` (in eval mode) for Paddle Inference and return the directory.

    ``output_dir`` receives the program (``model.json`` on Paddle 3.x, ``model.pdmodel`` on 2.x),
    ``model.pdiparams`` and ``ppim.json`` (model name, transforms cfg, input shape, sub-network, Paddle
    version). The input is ``x``: float32 (batch_size or any, 3, S, S), S the model's input size;
    super models always take the 224 crop and have their current sub-network (``set_subnet``) baked
    in. ``optimize`` (default) exports an inference layout with the same numbers, chosen for the
    ``precision``, ``device`` and ``engine`` the export will run with (see attention_layout): attention as
    _FusedAttention (one fused CPU kernel; fp32 on CPU) or _DeployAttention (q, k, v as three fc
    GEMMs, the q scale folded in, head split and merge folded into the attention matmuls by the
    oneDNN passes; bf16 and GPU) and, for a SuperViT sub-network smaller than
    its input, the bilinear resize as two GEMMs (_DeployResize; Paddle 3.x's oneDNN predictor cannot
    run F.interpolate). With ``optimize=False`` the model's own graph is saved as it is.

    Everything is written to a fresh directory beside ``output_dir`` first, then published (see
    _publish): a new directory appears whole; over a previous export its files are replaced one by
    one, atomically, and the user's other files there are kept. Any other non-empty directory or a
    file is left alone (FileExistsError), and ``sources`` (e.g. the checkpoint the model was loaded
    from) may not be the output (ValueError). ``cache_key`` is recorded in the manifest (see
    cached_export)."""
    output_dir = check_output_dir(output_dir, sources)
    size = input_size(model, img_size)
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive int or None (any batch), got {batch_size!r}")
    was_training = model.training
    try:
        model.eval()
        with staged_dir(output_dir) as tmp:
            spec = paddle.static.InputSpec([batch_size, 3, size, size], "float32", name=INPUT_NAME)
            subnet = current_subnet(model)
            target = model
            if optimize and subnet is not None and subnet.img_size != size:
                target = _DeployResize(model, size, subnet.img_size)
                target.eval()
            layout = attention_layout(precision, device, engine) if optimize else None
            with _preserve_forwards(model), _deploy_layout(model, layout) as deploy_attention:
                paddle.jit.save(target, str(tmp / "model"), input_spec=[spec])
            program = program_file(tmp)
            if not (tmp / PARAMS_FILE).is_file():  # a model without parameters still gets a params file
                (tmp / PARAMS_FILE).write_bytes(b"")
            cfg = dict(getattr(model, "pretrained_cfg", None) or {})
            if cfg.get("crop") and int(cfg["crop"]) != size:
                cfg = cfg_for_img_size(cfg, size)
            from ..version import __version__ as ppim_version

            manifest = {
                "format": "ppim-inference",
                "format_version": 1,
                "model": model_name(model),
                "input_name": INPUT_NAME,
                "input_shape": [batch_size or -1, 3, size, size],
                "input_dtype": "float32",
                "num_classes": int(getattr(model, "num_classes", cfg.get("num_classes", 0)) or 0),
                MODEL_KEY: describe_model(model),  # what ppim.create_model(checkpoint_path=) reads from a checkpoint
                "subnet": None if subnet is None else subnet.as_dict(),
                "cfg": cfg,
                "program_file": program.name,
                "params_file": PARAMS_FILE,
                "ir": "pir" if program.suffix == ".json" else "legacy",
                "optimized": bool(optimize),
                "deploy_attention": deploy_attention,  # fused, matmul or None (the model's own)
                "precision": precision,
                "device": device,
                "engine": engine,
                "paddle_version": paddle.__version__,
                "ppim_version": ppim_version,
                "export_revision": EXPORT_REVISION,
                "cache_key": cache_key,
                "files": sorted([p.name for p in tmp.iterdir()] + [MANIFEST]),
            }
            write_json(tmp / MANIFEST, manifest)
    finally:
        if was_training:
            model.train()
    return output_dir


def load_manifest(model_dir: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The ppim.json of an export ({} for a directory exported by other tools)."""
    path = Path(model_dir) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}



# ------------------------------------------------------------------------------------------------
# the export cache
# ------------------------------------------------------------------------------------------------
def export_key(model: nn.Layer, img_size: Optional[int] = None, optimize: bool = True, precision: str = "fp32",
               device: str = "cpu", engine: str = "inference") -> str:
    """What identifies an export: the model's class and name, every parameter and buffer (names,
    shapes, dtypes, values), the sub-network, the input size, the rewrites (``optimize``, the
    attention layout for ``precision``, ``device`` and ``engine``, EXPORT_REVISION), and the Paddle and
    ppim versions. 32 hex digits (BLAKE2b)."""
    from ..version import __version__ as ppim_version

    digest = hashlib.blake2b(digest_size=16)
    meta = {"model": model_name(model), "class": type(model).__name__, "subnet": current_subnet(model),
            "input_size": input_size(model, img_size), "optimize": bool(optimize), "revision": EXPORT_REVISION,
            "layout": attention_layout(precision, device, engine) if optimize else None,
            "paddle": paddle.__version__, "ppim": ppim_version}
    digest.update(json.dumps(meta, sort_keys=True).encode("utf-8"))
    for name, value in model.state_dict().items():
        array = np.ascontiguousarray(value.numpy())
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode("utf-8"))
        digest.update(array.view(np.uint8).reshape(-1))
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where cached exports live: ``$PPIM_HOME/exports``."""
    return ppim_home() / "exports"


def cached_export(model: nn.Layer, img_size: Optional[int] = None, optimize: bool = True, precision: str = "fp32",
                  device: str = "cpu", engine: str = "inference", root: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The export of ``model`` from the cache (``root``, default ``$PPIM_HOME/exports``), made once.

    Keyed by export_key (weights, sub-network, input size, rewrites, Paddle and ppim versions) in a
    directory of its own, ``<model>-<key>``, published whole by one rename, so concurrent processes
    and readers never see a partial export. Targets (precision, device, engine) that share an
    attention layout share the export."""
    key = export_key(model, img_size, optimize, precision, device, engine)
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name(model))
    path = Path(root or cache_dir()) / f"{safe_name}-{key}"
    if load_manifest(path).get("cache_key") == key:
        try:
            program_file(path)
            return path
        except FileNotFoundError:
            pass  # damaged by hand: export again
    return export(model, path, img_size, optimize=optimize, precision=precision, device=device, engine=engine,
                  cache_key=key)
