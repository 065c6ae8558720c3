"""``train(TrainConfig(...))``: everything tools/train.py does, as one function a notebook can call.
Checks the data layout, the class count, the output folder and a --resume checkpoint before any
training starts; runs on one process or under ``python -m paddle.distributed.launch`` (each rank its
shard per epoch, gradients all-reduced by paddle.DataParallel)."""
from __future__ import annotations

import dataclasses
import random
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import paddle

from ..runtime import CAPABILITIES, default_device, dist_info, missing, set_cpu_threads
from ..data import TrainLoader
from ..errors import InputError
from ..evaluate import evaluate
from ..registry import create_model, model_name
from .checkpoint import load_checkpoint
from .data import open_train_val
from .engine import ClassificationStep, Trainer
from .records import Records
from .run_folder import RunFolder, check_outside_data


class ConfigError(InputError):
    """A setting that cannot work (named with its fix), raised before anything trains."""


@dataclasses.dataclass
class TrainConfig:
    """A training run; field names follow timm's train.py flags (``--weight-decay`` = weight_decay)."""

    data: str
    model: str
    output: str = "runs/train"
    pretrained: bool = False
    checkpoint: Optional[str] = None  # initial weights (file or URL), instead of the registered ones
    resume: Optional[str] = None  # a last.pdparams / best.pdparams to continue
    overwrite: bool = False  # replace the records of another run in ``output``
    num_classes: Optional[int] = None  # default: the data's
    img_size: Optional[int] = None
    model_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    drop: float = 0.0
    drop_path: Optional[float] = None  # default: the model's
    batch_size: int = 64  # per process
    workers: Optional[int] = None
    epochs: int = 300
    opt: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.05
    momentum: float = 0.9
    clip_grad: Optional[float] = None
    sched: str = "cosine"
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    cooldown_epochs: int = 10
    smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    cutmix_minmax: Optional[Tuple[float, float]] = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    aa: Optional[str] = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25
    train_interpolation: str = "random"
    scale: Tuple[float, float] = (0.08, 1.0)
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    model_ema: bool = False
    model_ema_decay: float = 0.99992
    amp: bool = False
    amp_dtype: Optional[str] = None  # default: float16 on GPU, bfloat16 on CPU
    device: Optional[str] = None  # cpu | gpu (default: gpu when there is one)
    sync_bn: bool = False
    threads: Optional[int] = None  # CPU math threads (default: every CPU this process may use)
    seed: int = 42
    eval_interval: int = 1
    val: bool = True
    visualdl: bool = False
    progress: bool = True
    # token labeling and SuperViT (TokenLabeling's main.py flags; see token_labels.plugin)
    token_label: bool = False
    token_label_data: Optional[str] = None  # official .pt folder or packed labels
    token_label_size: int = 1  # side of the token grid the labels are aligned to (14 for 224 LV-ViT)
    dense_weight: float = 1.0
    cls_weight: float = 1.0
    ground_truth: bool = False
    repeated_aug: bool = False  # DeiT's repeated-augmentation sampler


def _device(name: Optional[str]) -> str:
    if name is None:
        return default_device()
    if name == "gpu" and missing("gpu"):
        raise ConfigError(f"--device gpu: {missing('gpu')}; or use --device cpu")
    return name


def _check_output(output: Path) -> None:
    """The output folder must be creatable and writable, checked by writing into it."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as error:
        raise ConfigError(f"--output {output} is not writable ({error.strerror or error}): "
                          f"choose a folder you can write to") from None


def _amp_dtype(config: TrainConfig, device: str) -> Optional[str]:
    if not config.amp:
        return None
    dtype = config.amp_dtype or ("float16" if device == "gpu" else "bfloat16")
    if dtype not in ("float16", "bfloat16"):
        raise ConfigError(f"--amp-dtype {dtype}: choose float16 or bfloat16")
    if device == "cpu":
        if dtype == "float16":
            raise ConfigError("--amp-dtype float16 needs a GPU; on the CPU use bfloat16")
        reason = missing("eager_cpu_bf16")
        if reason:
            raise ConfigError(f"--amp on the CPU needs {CAPABILITIES['eager_cpu_bf16'].needs}: {reason} "
                              f"(autocast would silently run fp32); drop --amp (or train on a GPU)")
    return dtype


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def _build_criterion(config: TrainConfig, num_classes: int):
    """(criterion, mixup or None): soft-target CE after Mixup/CutMix (which smooths the targets),
    else label smoothing, else plain cross-entropy."""
    from . import losses

    if config.mixup > 0 or config.cutmix > 0 or config.cutmix_minmax is not None:
        from .mixup import Mixup

        mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, cutmix_minmax=config.cutmix_minmax,
                      prob=config.mixup_prob, switch_prob=config.mixup_switch_prob, mode=config.mixup_mode,
                      label_smoothing=config.smoothing, num_classes=num_classes)
        return losses.SoftTargetCrossEntropy(), mixup
    if config.smoothing > 0:
        return losses.LabelSmoothingCrossEntropy(smoothing=config.smoothing), None
    return paddle.nn.CrossEntropyLoss(), None


def _transforms(model, config: TrainConfig):
    from ..transforms import create_transforms

    overrides = {"auto_augment": config.aa, "re_prob": config.reprob, "interpolation": config.train_interpolation,
                 "scale": config.scale, "ratio": config.ratio, "hflip": config.hflip}
    return create_transforms(model, is_training=True, **overrides), create_transforms(model)


def identity(config: TrainConfig, num_classes: int, model) -> Dict[str, Any]:
    """What a checkpoint must share with this run to be resumed by it."""
    return {"model_name": model_name(model), "num_classes": num_classes,
            "img_size": getattr(model, "img_size", config.img_size)}


def build_trainer(config: TrainConfig, *, step: Optional[Callable] = None,
                  order: Optional[Callable[[int], Any]] = None, log: Callable[[str], None] = print) -> Trainer:
    """Check everything, build model, data, optimizer, schedule, EMA and the Trainer (resumed when
    ``config.resume``). ``step`` / ``order``: the per-batch work and the per-epoch sample order
    (hooks for token labelling and repeated augmentation); defaults: ClassificationStep with
    config's criterion, a seeded permutation."""
    device = _device(config.device)
    amp = _amp_dtype(config, device)
    output = Path(config.output)
    rank, world = dist_info()
    folder = None
    if rank == 0:
        check_outside_data(output, config.data)
        _check_output(output)
        folder = RunFolder(output).acquire()  # held until the trainer's fit ends
    try:
        trainer = _build_trainer(config, device, amp, output, rank, world, folder, step=step, order=order, log=log)
    except BaseException:
        if folder is not None:
            folder.release()
        raise
    return trainer


def _build_trainer(config: TrainConfig, device: str, amp: Optional[str], output: Path, rank: int, world: int,
                   folder: Optional[RunFolder], *, step: Optional[Callable], order: Optional[Callable[[int], Any]],
                   log: Callable[[str], None]) -> Trainer:
    checkpoint = load_checkpoint(config.resume) if config.resume else None
    if folder is not None:
        folder.claim(config.resume, overwrite=config.overwrite)
    if config.sync_bn and device != "gpu":
        raise ConfigError("--sync-bn needs GPUs (paddle.nn.SyncBatchNorm); drop it on the CPU")
    # Under paddle.distributed.launch each process uses its own GPU (launch's FLAGS_selected_gpus).
    paddle.set_device(f"gpu:{paddle.distributed.ParallelEnv().device_id}" if device == "gpu" and world > 1 else device)

    if device == "cpu":
        set_cpu_threads(config.threads)  # for the run (Paddle's eager CPU math starts with one thread)
    train_set, val_set, num_classes = open_train_val(config.data, num_classes=config.num_classes, val=config.val)

    kwargs = dict(config.model_kwargs)
    kwargs["num_classes"] = num_classes
    if config.img_size:
        kwargs["img_size"] = config.img_size
    if config.drop_path is not None:
        kwargs["drop_path_rate"] = config.drop_path
    if config.drop:
        kwargs["drop_rate"] = config.drop
    _seed_everything(config.seed)  # the same initial weights on every rank
    model = create_model(config.model, pretrained=config.checkpoint or config.pretrained, **kwargs)
    run_identity = identity(config, num_classes, model)
    train_set.transforms, eval_transforms = _transforms(model, config)
    if val_set is not None:
        val_set.transforms = eval_transforms
    _seed_everything(config.seed + rank)  # different augmentation and drop-path draws per rank

    from .ema import ModelEma
    from .optim import create_optimizer
    from .scheduler import CosineLRScheduler

    if config.sched != "cosine":
        raise ConfigError(f"--sched {config.sched}: only cosine is available")
    scheduler = CosineLRScheduler(base_lr=config.lr, epochs=config.epochs, warmup_epochs=config.warmup_epochs,
                                  warmup_lr=config.warmup_lr, min_lr=config.min_lr,
                                  cooldown_epochs=config.cooldown_epochs)
    optimizer = create_optimizer(model, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay,
                                 momentum=config.momentum, clip_grad=config.clip_grad, lr_scheduler=scheduler)
    ema = ModelEma(model, decay=config.model_ema_decay) if config.model_ema else None
    criterion, mixup = _build_criterion(config, num_classes)
    from .token_labels.plugin import plan_training

    plan = plan_training(config, model, train_set, num_classes, criterion, mixup, world)
    train_set, mixup = plan.train_set, plan.mixup
    step, order = step or plan.step, order or plan.order
    scaler = paddle.amp.GradScaler(init_loss_scaling=2.0 ** 16) if amp == "float16" else None

    wrapped = model
    if world > 1:
        if config.sync_bn:
            wrapped = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(wrapped)
        wrapped = paddle.DataParallel(wrapped)
    loader = TrainLoader(train_set, config.batch_size, config.workers, seed=config.seed, rank=rank,
                         world_size=world, order=order)
    if len(loader) == 0:
        raise ConfigError(f"-b {config.batch_size} is larger than the {len(loader.indices)} training images "
                          f"each of {world} process(es) gets: lower -b")

    def run_eval(layer) -> Dict[str, Any]:
        return evaluate(layer, val_set, batch_size=config.batch_size, num_workers=config.workers,
                        device=device, distributed=world > 1, progress=False, verbose=False)

    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}
    trainer = Trainer(wrapped, optimizer, loader, step=step or ClassificationStep(criterion), mixup=mixup,
                      scheduler=scheduler, ema=ema, amp=amp, scaler=scaler,
                      evaluate=run_eval if val_set is not None else None, eval_interval=config.eval_interval,
                      output=output, records=None, progress=config.progress, rank=rank,
                      identity=run_identity, args=args, log=log if rank == 0 else (lambda message: None),
                      run_folder=folder)
    if checkpoint is not None:
        trainer.load_state(checkpoint, config.resume)
        if trainer.epoch >= config.epochs:
            raise ConfigError(f"--resume {config.resume} already finished epoch {trainer.epoch - 1} of "
                              f"{config.epochs}: pass a larger --epochs to train on")
    if folder is not None:  # everything checked: now the records of a replaced run may go
        folder.replace_records()
        folder.carry_over(config.resume)
    if rank == 0:
        # A run resumed into a new folder carries the rows of its earlier epochs along.
        history = Path(config.resume).parent / "summary.csv" if config.resume else None
        trainer.records = Records(output, visualdl=config.visualdl, start_epoch=trainer.epoch, history=history)
    return trainer


def train(config: TrainConfig, **hooks: Any) -> Dict[str, Any]:
    """Build (see build_trainer) and run; returns Trainer.fit's summary plus the output folder."""
    trainer = build_trainer(config, **hooks)
    try:
        result = trainer.fit(config.epochs)
    finally:
        if trainer.records is not None:
            trainer.records.close()
    return {**result, "output": str(config.output)}
