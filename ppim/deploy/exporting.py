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
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..builder import MODEL_KEY, describe_model
from ..runtime import CAPABILITIES, has, missing
from ..errors import CapabilityError, InputError
from ..fileio import current_umask, ppim_home, write_atomic, write_json
from ..layers import Attention
from ..registry import cfg_for_img_size, model_name
from ..subnet import current_subnet
from .common import INPUT_NAME, MANIFEST, PARAMS_FILE, PROGRAM_FILES, input_size
from .quantize import Calibration, as_calibration
from .registry import engine_spec
from .registry import quantizer as engine_quantizer

__all__ = ["export", "load_manifest", "cached_export", "export_key", "cache_dir", "attention_layout",
           "fused_attention_available", "export_requirements", "check_requirements", "verify_export",
           "DamagedExportError"]

# Bumped whenever the rewrites below change the exported graph, so cached exports are remade.
EXPORT_REVISION = 5
#: The ppim.runtime capability each attention layout needs on the machine that runs the export.
LAYOUT_REQUIREMENTS = {"fused": ("fused_attention",), "matmul": (), None: ()}


class DamagedExportError(InputError):
    """An export directory whose manifest or files are not what was exported (edited, truncated,
    swapped, missing, or naming files outside the directory). ``problem``: what is wrong."""

    def __init__(self, problem: str):
        super().__init__(f"{problem}: export the model again")
        self.problem = problem


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
    """The attention layout an optimised export uses: 'fused' (_FusedAttention) for fp32 on CPU in an
    engine that runs Paddle's fused op (Paddle Inference) where this machine runs it
    (fused_attention_available), else 'matmul' (_DeployAttention: bf16 runs it faster, the fused
    kernel being fp32 only, paddle2onnx converts it for the other engines, and every CPU runs it)."""
    fused = (engine_spec(engine).fused_attention and precision == "fp32" and device == "cpu"
             and fused_attention_available())
    return "fused" if fused else "matmul"


def fused_attention_available() -> bool:
    """Whether this machine runs Paddle's fused CPU attention op (``self_dp_attention``): Paddle 3.x
    with PIR programs, a CPU with avx512f (Paddle's own self_attention_fuse_pass emits the op only
    there; elsewhere its kernel dies by SIGILL), and its canary (ppim.runtime, capability
    'fused_attention')."""
    return has("fused_attention")


def export_requirements(manifest: Dict[str, Any]) -> Tuple[str, ...]:
    """The ppim.runtime capabilities the machine running an export needs (its manifest's ``requires``;
    exports made before it was recorded: from their attention layout)."""
    if isinstance(manifest.get("requires"), list):
        return tuple(str(name) for name in manifest["requires"])
    return LAYOUT_REQUIREMENTS.get(manifest.get("deploy_attention"), ())


def check_requirements(model_dir: Union[str, os.PathLike], manifest: Dict[str, Any]) -> None:
    """CapabilityError unless this machine has every capability the export needs, so an export made
    on a machine with the fused attention kernel is never run on one without it."""
    for name in export_requirements(manifest):
        if name not in CAPABILITIES:
            raise CapabilityError(f"{model_dir} needs {name!r}, which this ppim does not know: export it again "
                                  f"with this ppim")
        reason = missing(name)
        if reason:
            raise CapabilityError(f"{model_dir} was exported for machines with {CAPABILITIES[name].needs}, "
                                  f"and {reason}: export the model again on this machine (ppim.deploy.export or "
                                  f"ppim-export), which picks a layout this machine runs")


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
    """The exported program of ``model_dir``: the manifest's program_file (confined to the export),
    else the first of PROGRAM_FILES there."""
    named = load_manifest(model_dir).get("program_file")
    if named is not None:
        return export_file(model_dir, named)
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
    if isinstance(manifest.get("digests"), dict):
        manifest["digests"][name] = _digest(model_dir / name)
    _write_manifest(model_dir, manifest)
    return model_dir / name


def record(model_dir: Path, name: str, value: Any) -> None:
    """Set the manifest entry ``name`` of an export to ``value`` (e.g. what its int8 form is)."""
    _write_manifest(model_dir, {**load_manifest(model_dir), name: value})


def int8_file(model_dir: Path, manifest: Dict[str, Any], engine: str, key: str = "file") -> Path:
    """The int8 form of an export for ``engine`` (its manifest's ``int8`` entry ``key``: 'file', or
    'params' for Paddle Inference's weights); InputError when it was not exported for int8."""
    entry = manifest.get("int8")
    if not isinstance(entry, dict) or entry.get("engine") != engine:
        raise InputError(f"{model_dir} holds no int8 form for {engine}: export it with precision int8 and "
                         f"calibration images (ppim-export --engine {engine} --precision int8 --calibration DIR)")
    return export_file(model_dir, entry.get(key))


def params_file(model_dir: Path) -> Path:
    """The parameters file of an export: the manifest's params_file, confined to the export."""
    return export_file(model_dir, load_manifest(model_dir).get("params_file", PARAMS_FILE))


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
        raise FileExistsError(f"{output_dir} is a file, not a ppim export folder; choose another output "
                              f"directory")
    if output_dir.exists() and not ((output_dir / MANIFEST).is_file() or not any(output_dir.iterdir())):
        raise FileExistsError(f"{output_dir} is a folder of other files, not a ppim export; choose another "
                              f"output directory")
    return output_dir


def export(model: nn.Layer, output_dir: Union[str, os.PathLike], img_size: Optional[int] = None,
           batch_size: Optional[int] = None, optimize: bool = True, precision: str = "fp32", device: str = "cpu",
           engine: str = "inference", sources: Sequence[Union[str, os.PathLike]] = (), cache_key: Optional[str] = None,
           calibration: Optional[Union[Calibration, str, os.PathLike]] = None) -> Path:
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

    ``precision='int8'`` also writes the ``engine``'s int8 form of the graph (its registry
    ``quantizer``: OpenVINO's by NNCF, Paddle Inference's by Paddle's PTQ), calibrated on
    ``calibration`` (a folder of images or a ppim.deploy.quantize.Calibration), recorded in the
    manifest's ``int8`` entry.

    Everything is written to a fresh directory beside ``output_dir`` first, then published (see
    _publish): a new directory appears whole; over a previous export its files are replaced one by
    one, atomically, and the user's other files there are kept. Any other non-empty directory or a
    file is left alone (FileExistsError), and ``sources`` (e.g. the checkpoint the model was loaded
    from) may not be the output (ValueError). ``cache_key`` is recorded in the manifest (see
    cached_export)."""
    output_dir = check_output_dir(output_dir, sources)
    size = input_size(model, img_size)
    calibration = as_calibration(model, calibration, precision)
    quantizer = engine_quantizer(engine) if precision == "int8" else None
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
                "requires": list(LAYOUT_REQUIREMENTS[deploy_attention]) + (["cpu_int8"] if quantizer else []),
                "files": sorted([p.name for p in tmp.iterdir()] + [MANIFEST]),
                "digests": {p.name: _digest(p) for p in sorted(tmp.iterdir())},
            }
            _write_manifest(tmp, manifest)
            if quantizer is not None:
                quantizer(model, tmp, calibration)
    finally:
        if was_training:
            model.train()
    return output_dir


def load_manifest(model_dir: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The ppim.json of an export ({} for a directory exported by other tools); DamagedExportError
    when it is not a JSON object."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise DamagedExportError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise DamagedExportError(f"{path} is not a JSON object")
    return manifest


# ------------------------------------------------------------------------------------------------
# integrity: every file's size and sha256 in the manifest, the manifest's own digest, names confined
# ------------------------------------------------------------------------------------------------
_MANIFEST_DIGEST = "manifest_sha256"
#: Beside the files of an export: the sha256 already computed for each (size, mtime, ctime, inode),
#: so a file is hashed again only when it changed (not listed in the manifest: never removed by an
#: export over it, harmless when stale).
VERIFIED_FILE = ".ppim-verified.json"
_HASH_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _digest(path: Path) -> Dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def _manifest_digest(manifest: Dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != _MANIFEST_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _write_manifest(model_dir: Path, manifest: Dict[str, Any]) -> None:
    manifest = {**manifest, _MANIFEST_DIGEST: _manifest_digest(manifest)}
    write_json(model_dir / MANIFEST, manifest)


def export_file(model_dir: Union[str, os.PathLike], name: Any) -> Path:
    """``model_dir / name`` for a file name an export's manifest gives, confined to the export: a
    plain name (no folder, not '..'), a regular file whose real path is inside ``model_dir``
    (DamagedExportError otherwise: a manifest never leads a reader elsewhere)."""
    model_dir = Path(model_dir)
    if not isinstance(name, str) or not name or name in (".", "..") or name != os.path.basename(name) \
            or "/" in name or "\\" in name or "\0" in name:
        raise DamagedExportError(f"{model_dir / MANIFEST} names {name!r} as a file of the export, which is not "
                                 f"a file name inside {model_dir}")
    path = model_dir / name
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(model_dir):
        raise DamagedExportError(f"{path} leads outside {model_dir} (a link)")
    if not path.is_file():
        raise DamagedExportError(f"{path} is missing")
    return path


def _verified(model_dir: Path) -> Dict[str, Any]:
    try:
        stamps = json.loads((model_dir / VERIFIED_FILE).read_text(encoding="utf-8"))
        return stamps if isinstance(stamps, dict) else {}
    except (OSError, ValueError):
        return {}


def verify_export(model_dir: Union[str, os.PathLike], remember: bool = False) -> Optional[str]:
    """None when the export in ``model_dir`` is what was exported, else what is wrong (one
    sentence): the manifest's own digest, then every file it lists (confined to ``model_dir``, see
    export_file) against its recorded size and sha256. Hashes already checked are kept in
    VERIFIED_FILE by (size, mtime, ctime, inode) with ``remember`` (the export cache), so an
    unchanged file is not read again. Exports made before digests were recorded have nothing to
    check (None)."""
    model_dir = Path(model_dir)
    try:
        manifest = load_manifest(model_dir)
        if not manifest:
            return f"{model_dir} has no {MANIFEST}"
        if _MANIFEST_DIGEST in manifest and manifest[_MANIFEST_DIGEST] != _manifest_digest(manifest):
            return f"{model_dir / MANIFEST} was changed after the export"
        if "digests" not in manifest:
            return None  # an export made before digests were recorded
        digests = manifest["digests"]
        if not isinstance(digests, dict) or _MANIFEST_DIGEST not in manifest:
            return f"{model_dir / MANIFEST} has damaged digests"
        for key in ("program_file", "params_file"):
            if manifest.get(key) not in digests:
                return f"{model_dir / MANIFEST}: its {key} {manifest.get(key)!r} has no digest"
        stamps, fresh = _verified(model_dir), {}
        for name, expected in sorted(digests.items()):
            path = export_file(model_dir, name)
            if not isinstance(expected, dict):
                return f"{model_dir / MANIFEST}: bad digest for {name}"
            info = path.stat()
            if info.st_size != expected.get("size"):
                return f"{path} has {info.st_size} bytes, not the {expected.get('size')} exported"
            stamp = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]
            known = stamps.get(name)
            if isinstance(known, dict) and known.get("stamp") == stamp and known.get("sha256") == expected.get("sha256"):
                fresh[name] = known
                continue
            if _sha256(path) != expected.get("sha256"):
                return f"{path} is not the file exported (sha256 differs)"
            fresh[name] = {"stamp": stamp, "sha256": expected["sha256"]}
        if remember and fresh != stamps:
            with contextlib.suppress(OSError):  # a read-only export: checked again next time
                write_json(model_dir / VERIFIED_FILE, fresh)
    except DamagedExportError as error:
        return error.problem
    except OSError as error:
        return f"{model_dir} cannot be read ({error.strerror or error})"
    return None


# ------------------------------------------------------------------------------------------------
# the export cache
# ------------------------------------------------------------------------------------------------
def export_key(model: nn.Layer, img_size: Optional[int] = None, optimize: bool = True, precision: str = "fp32",
               device: str = "cpu", engine: str = "inference", calibration: Optional[Calibration] = None) -> str:
    """What identifies an export: the model's class and name, every parameter and buffer (names,
    shapes, dtypes, values), the sub-network, the input size, the rewrites (``optimize``, the
    attention layout for ``precision``, ``device`` and ``engine`` on this machine, EXPORT_REVISION),
    the capabilities a machine needs to run it, and the Paddle and ppim versions; for int8 also the
    engine that quantized it and the calibration images' digest. 32 hex digits (BLAKE2b)."""
    from ..version import __version__ as ppim_version

    digest = hashlib.blake2b(digest_size=16)
    layout = attention_layout(precision, device, engine) if optimize else None
    meta = {"model": model_name(model), "class": type(model).__name__, "subnet": current_subnet(model),
            "input_size": input_size(model, img_size), "optimize": bool(optimize), "revision": EXPORT_REVISION,
            "layout": layout, "requires": list(LAYOUT_REQUIREMENTS[layout]),
            "paddle": paddle.__version__, "ppim": ppim_version}
    if precision == "int8":
        meta["int8"] = {"engine": engine, "calibration": calibration.digest if calibration else None}
    digest.update(json.dumps(meta, sort_keys=True).encode("utf-8"))
    for name, value in model.state_dict().items():
        array = np.ascontiguousarray(value.numpy())
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode("utf-8"))
        digest.update(array.view(np.uint8).reshape(-1))
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where cached exports live: ``$PPIM_HOME/exports``."""
    return ppim_home() / "exports"


def _entry_problem(path: Path, key: str) -> Optional[str]:
    """None when the cache entry ``path`` is the export of ``key``, whole and unchanged."""
    problem = verify_export(path, remember=True)
    if problem:
        return problem
    manifest = load_manifest(path)
    if "digests" not in manifest:
        return "it records no digests"
    if manifest.get("cache_key") != key:
        return f"its manifest is for another export ({manifest.get('cache_key')!r})"
    return None


def _discard(path: Path) -> None:
    """Remove a damaged cache entry: moved aside first (one rename: no reader sees it half removed),
    then deleted without following links."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".damaged", dir=path.parent))
    os.rename(path, aside / "entry")
    shutil.rmtree(aside, ignore_errors=True)


def cached_export(model: nn.Layer, img_size: Optional[int] = None, optimize: bool = True, precision: str = "fp32",
                  device: str = "cpu", engine: str = "inference", root: Optional[Union[str, os.PathLike]] = None,
                  calibration: Optional[Union[Calibration, str, os.PathLike]] = None) -> Path:
    """The export of ``model`` from the cache (``root``, default ``$PPIM_HOME/exports``), made once.

    Keyed by export_key (weights, sub-network, input size, rewrites, the capabilities it needs,
    Paddle and ppim versions) in a directory of its own, ``<model>-<layout>-<key>``, published whole
    by one rename, so concurrent processes and readers never see a partial export. Targets
    (precision, device, engine) that share an attention layout share the export. A shared
    PPIM_HOME is safe on every machine: an export with the fused attention kernel has another key
    than the one a machine without it uses, and its manifest's ``requires`` is checked before it is
    run. An entry that is not what was exported (a file changed, swapped or missing, the manifest
    edited or naming files outside the entry) is exported again, with a one-line note on stderr.
    An int8 export (``calibration`` images, see export) is an entry of its own per engine and
    calibration."""
    calibration = as_calibration(model, calibration, precision)
    key = export_key(model, img_size, optimize, precision, device, engine, calibration)
    layout = attention_layout(precision, device, engine) if optimize else "own"
    if precision == "int8":
        layout += f"-int8-{engine}"
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name(model))
    path = Path(root or cache_dir()) / f"{safe_name}-{layout}-{key}"
    if path.exists() or path.is_symlink():
        problem = _entry_problem(path, key)
        if problem is None:
            check_requirements(path, load_manifest(path))
            return path
        print(f"note: the cached export {path} is damaged ({problem}); exporting it again", file=sys.stderr)
        _discard(path)
    return export(model, path, img_size, optimize=optimize, precision=precision, device=device, engine=engine,
                  cache_key=key, calibration=calibration)
