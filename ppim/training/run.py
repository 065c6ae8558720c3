"""``train(TrainConfig(...))``: everything tools/train.py does, as one function a notebook can call.
Checks the data layout, the class count, the output folder and a --resume checkpoint before any
training starts; runs on one process or under ``python -m paddle.distributed.launch`` (each rank its
shard per epoch, gradients all-reduced by paddle.DataParallel)."""
from __future__ import annotations

import dataclasses
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Set, Tuple

import numpy as np
import paddle

from ..builder import MODEL_KEY, checkpoint_description, create_model, set_class_names
from ..runtime import CAPABILITIES, default_device, dist_info, missing, set_cpu_threads
from ..data import TrainLoader
from ..errors import ParameterError
from ..evaluate import evaluate
from ..registry import model_name
from ..transforms import create_transforms
from . import losses
from .checkpoint import ResumeError, load_checkpoint
from .resume_check import check_fields
from .data import open_train_val
from .ema import ModelEma
from .engine import ClassificationStep, Trainer
from .mixup import Mixup
from .optim import create_optimizer
from .recipes import apply_recipe
from .records import Records
from .run_folder import RunFolder, check_outside_data
from .scheduler import CosineLRScheduler, fit_schedule
from .token_labels.plugin import plan_training


class ConfigError(ParameterError):
    """A setting that cannot work (named with its fix: ``amp=`` in a notebook, ``--amp`` on the command
    line), raised before anything trains."""


@dataclasses.dataclass
class TrainConfig:
    """A training run; field names follow timm's train.py flags (``--weight-decay`` = weight_decay).
    ``model`` may be left out with a ``checkpoint`` ppim wrote (its model is fine-tuned), and
    everything but ``resume`` with ``resume`` (the run continues with its own settings; fields set
    here override them). ``recipe`` fills the fields left at their defaults (see training.recipes)."""

    data: Optional[str] = None
    model: Optional[str] = None
    output: str = "runs/train"
    pretrained: bool = False
    checkpoint: Optional[str] = None  # initial weights (file or URL), instead of the registered ones
    resume: Optional[str] = None  # a last.pdparams / best.pdparams to continue
    overwrite: bool = False  # replace the records of another run in ``output``
    recipe: Optional[str] = None  # official (default) | finetune | none: see training.recipes
    skip_bad: bool = False  # skip unreadable images (each reported once) instead of stopping
    num_classes: Optional[int] = None  # default: the data's
    allow_outside_root: bool = False  # list files may name images outside DATA
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
        raise ConfigError(f"{{device}}: {missing('gpu')}; or use {{device:=cpu}}", device="gpu")
    return name


def _check_output(output: Path) -> Optional[Path]:
    """The output folder must be creatable and writable, checked by writing into it. Returns the
    outermost folder this created (None if it existed), for removal if the run fails to start."""
    created = None
    for folder in [output, *output.parents]:
        if folder.exists():
            break
        created = folder
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as error:
        raise ParameterError(f"{{output}} is not writable ({error.strerror or error}): choose a folder you can "
                             f"write to", output=str(output)) from None
    return created


def _amp_dtype(config: TrainConfig, device: str) -> Optional[str]:
    if not config.amp:
        return None
    dtype = config.amp_dtype or ("float16" if device == "gpu" else "bfloat16")
    if dtype not in ("float16", "bfloat16"):
        raise ConfigError("{amp_dtype}: choose float16 or bfloat16", amp_dtype=dtype)
    if device == "cpu":
        if dtype == "float16":
            raise ConfigError("{amp_dtype} needs a GPU; on the CPU use bfloat16", amp_dtype=dtype)
        reason = missing("eager_cpu_bf16")
        if reason:
            raise ConfigError(f"{{amp}} on the CPU needs {CAPABILITIES['eager_cpu_bf16'].needs}: {reason} "
                              f"(autocast would silently run fp32); drop {{amp:name}} (or train on a GPU)", amp=True)
    return dtype


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def _build_criterion(config: TrainConfig, num_classes: int):
    """(criterion, mixup or None): soft-target CE after Mixup/CutMix (which smooths the targets),
    else label smoothing, else plain cross-entropy."""
    if config.mixup > 0 or config.cutmix > 0 or config.cutmix_minmax is not None:
        mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, cutmix_minmax=config.cutmix_minmax,
                      prob=config.mixup_prob, switch_prob=config.mixup_switch_prob, mode=config.mixup_mode,
                      label_smoothing=config.smoothing, num_classes=num_classes)
        return losses.SoftTargetCrossEntropy(), mixup
    if config.smoothing > 0:
        return losses.LabelSmoothingCrossEntropy(smoothing=config.smoothing), None
    return paddle.nn.CrossEntropyLoss(), None


def _transforms(model, config: TrainConfig):
    overrides = {"auto_augment": config.aa, "re_prob": config.reprob, "interpolation": config.train_interpolation,
                 "scale": config.scale, "ratio": config.ratio, "hflip": config.hflip}
    return create_transforms(model, is_training=True, **overrides), create_transforms(model)


def identity(config: TrainConfig, num_classes: int, model) -> Dict[str, Any]:
    """What a checkpoint must share with this run to be resumed by it."""
    return {"model_name": model_name(model), "num_classes": num_classes,
            "img_size": getattr(model, "img_size", config.img_size)}


_DEFAULTS = TrainConfig()


def given_fields(config: TrainConfig) -> Set[str]:
    """The fields of ``config`` that differ from TrainConfig's defaults (a library caller's choices)."""
    return {f.name for f in dataclasses.fields(TrainConfig) if getattr(config, f.name) != getattr(_DEFAULTS, f.name)}


def _from_args(args: Dict[str, Any]) -> Dict[str, Any]:
    """TrainConfig fields from a checkpoint's "args" (lists back to the tuples TrainConfig holds)."""
    names = {f.name: f for f in dataclasses.fields(TrainConfig)}
    values = {}
    for name, value in args.items():
        if name in names:
            values[name] = tuple(value) if isinstance(value, list) and name != "model_kwargs" else value
    return values


def continue_run(config: TrainConfig, checkpoint: Dict[str, Any], given: Set[str],
                 log: Callable[[str], None] = print) -> TrainConfig:
    """The config of the run ``checkpoint`` (read from ``config.resume``) belongs to: its own settings
    and folder, with the fields in ``given`` (set explicitly) overriding them, each change logged."""
    source = config.resume
    recorded = checkpoint.get("args")
    if not isinstance(recorded, dict) or not recorded.get("model"):
        raise ResumeError("{resume} does not record its run's settings (an older ppim?): pass them again "
                          "({data:name}, {model:name}, {output:name}, ...) as that run had them", resume=source,
                          data=None, model=None, output=None)
    values = _from_args(recorded)
    values.update(resume=source, checkpoint=None, pretrained=False, recipe="none",  # weights: the checkpoint's
                  output=str(Path(source).resolve().parent))
    changes = []
    for name in sorted(given - {"resume", "checkpoint", "pretrained", "recipe"}):
        new, old = getattr(config, name), values.get(name)
        if name == "output" and Path(new).resolve() == Path(old).resolve():
            continue
        if new != old:
            changes.append(f"{name} {old!r} -> {new!r}")
            values[name] = new
    if not values.get("data") or not Path(values["data"]).is_dir():
        raise ParameterError(f"{{resume}}: its data folder {values.get('data')} is not there; pass {{data:name}}",
                             resume=source, data=None)
    epoch = checkpoint.get("epoch")  # checked with every other field when the state is loaded
    at = f" at epoch {epoch}" if isinstance(epoch, int) and not isinstance(epoch, bool) else ""
    log(f"resuming {source}{at} of {values.get('epochs')} in {values['output']}"
        + (f"; changed: {', '.join(changes)}" if changes else ""))
    return TrainConfig(**values)


def _start(config: TrainConfig, given: Optional[Set[str]], log: Callable[[str], None], world: int
           ) -> Tuple[TrainConfig, Optional[Dict[str, Any]]]:
    """The config this run trains (resumed or completed by its recipe) and the checkpoint it resumes."""
    given = given_fields(config) if given is None else set(given)
    if config.resume:
        checkpoint = load_checkpoint(config.resume)
        check_fields(checkpoint, config.resume)  # before anything reads them
        return continue_run(config, checkpoint, given, log), checkpoint
    if not config.data:
        raise ParameterError("pass {data:name}, the folder with train/ and val/ (or {resume:name} to continue a run)",
                             data=None, resume=None)
    if not config.model:
        if not config.checkpoint:
            raise ParameterError("pass {model:name} (or {checkpoint:name} of a ppim run to fine-tune)", model=None,
                                 checkpoint=None)
        description = checkpoint_description(config.checkpoint)
        if description is None:
            raise ParameterError("{checkpoint} does not say which model it holds: pass {model:name} too",
                                 checkpoint=config.checkpoint, model=None)
        config = dataclasses.replace(config, model=description["name"])
    values = dataclasses.asdict(config)
    changed = apply_recipe(values, given, world)
    if changed:
        log(f"recipe {config.recipe or 'official'} for {config.model}: "
            + ", ".join(f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}"
                        for name, value in changed))
        config = TrainConfig(**values)
    return config, None


def _class_names(train_set, num_classes: int):
    """The class names a run records: its class folders, or a list file's labels as text."""
    classes = getattr(train_set, "classes", None)
    return list(classes) if classes is not None and len(classes) == num_classes else \
        [str(label) for label in range(num_classes)]


def build_trainer(config: TrainConfig, *, step: Optional[Callable] = None,
                  order: Optional[Callable[[int], Any]] = None, log: Callable[[str], None] = print,
                  given: Optional[Set[str]] = None) -> Trainer:
    """Check everything, build model, data, optimizer, schedule, EMA and the Trainer (resumed when
    ``config.resume``: the run continues in its folder with its settings, the fields in ``given``
    (default: those differing from TrainConfig's defaults) overriding them). ``step`` / ``order``:
    the per-batch work and the per-epoch sample order (hooks for token labelling and repeated
    augmentation); defaults: ClassificationStep with config's criterion, a seeded permutation.
    A run that fails before training leaves no output folder behind."""
    rank, world = dist_info()
    config, checkpoint = _start(config, given, log, world)
    output = Path(config.output)
    created, folder = None, None
    if rank == 0:
        check_outside_data(output, config.data)
        created = _check_output(output)
    try:
        if rank == 0:
            folder = RunFolder(output).acquire()  # held until the trainer's fit ends
        trainer = _build(config, checkpoint, output, rank, world, folder, step, order, log)
        trainer.created_folder = created
        return trainer
    except BaseException:
        if folder is not None:
            folder.release()
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)  # made by this call, for this run only
        raise


def _build(config: TrainConfig, checkpoint: Optional[Dict[str, Any]], output: Path, rank: int, world: int,
           folder: Optional[RunFolder], step: Optional[Callable], order: Optional[Callable[[int], Any]],
           log: Callable[[str], None]) -> Trainer:
    if folder is not None:
        folder.claim(config.resume, overwrite=config.overwrite)
    device = _device(config.device)
    amp = _amp_dtype(config, device)
    if config.sync_bn and device != "gpu":
        raise ConfigError("{sync_bn} needs GPUs (paddle.nn.SyncBatchNorm); drop it on the CPU", sync_bn=True)
    # Under paddle.distributed.launch each process uses its own GPU (launch's FLAGS_selected_gpus).
    paddle.set_device(f"gpu:{paddle.distributed.ParallelEnv().device_id}" if device == "gpu" and world > 1 else device)

    if device == "cpu":
        set_cpu_threads(config.threads)  # for the run (Paddle's eager CPU math starts with one thread)
    train_set, val_set, num_classes = open_train_val(config.data, num_classes=config.num_classes, val=config.val,
                                                    allow_outside_root=config.allow_outside_root)

    described = (checkpoint or {}).get(MODEL_KEY) or {}
    kwargs = {**(described.get("kwargs") or {}), **config.model_kwargs}
    kwargs["num_classes"] = num_classes
    if config.img_size:
        kwargs["img_size"] = config.img_size
    if config.drop_path is not None:
        kwargs["drop_path_rate"] = config.drop_path
    if config.drop:
        kwargs["drop_rate"] = config.drop
    _seed_everything(config.seed)  # the same initial weights on every rank
    with _quiet_head_warning(log):
        model = create_model(config.model, pretrained=config.pretrained, checkpoint_path=config.checkpoint,
                             new_head=True, **kwargs)
    set_class_names(model, _class_names(train_set, num_classes))
    run_identity = identity(config, num_classes, model)
    train_set.transforms, eval_transforms = _transforms(model, config)
    if val_set is not None:
        val_set.transforms = eval_transforms
    _seed_everything(config.seed + rank)  # different augmentation and drop-path draws per rank

    if config.sched != "cosine":
        raise ParameterError("{sched}: only cosine is available", sched=config.sched)
    criterion, mixup = _build_criterion(config, num_classes)
    plan = plan_training(config, model, train_set, num_classes, criterion, mixup, world)
    train_set, mixup = plan.train_set, plan.mixup
    step, order = step or plan.step or ClassificationStep(criterion), order or plan.order
    loader = TrainLoader(train_set, config.batch_size, config.workers, seed=config.seed, rank=rank,
                         world_size=world, order=order, skip_bad=config.skip_bad)
    if len(loader) == 0:
        raise ParameterError(f"{{batch_size}} is larger than the {len(loader.indices)} training images each of "
                             f"{world} process(es) gets: lower it", batch_size=config.batch_size)
    warmup, cooldown, note = fit_schedule(config.epochs, config.warmup_epochs, config.cooldown_epochs)
    if note and checkpoint is None:
        log(note)
    # Timm's schedule (the cosine timed from epoch 0) where the warm-up fits; a scaled one runs per
    # update with the cosine after the warm-up, so the lr reaches its peak. The cooldown ends the run.
    scaled = note is not None
    cosine = config.epochs - cooldown - (warmup if scaled else 0)
    scheduler = CosineLRScheduler(base_lr=config.lr, epochs=max(cosine, 1 / len(loader)), warmup_epochs=warmup,
                                  warmup_lr=config.warmup_lr, min_lr=config.min_lr, cooldown_epochs=cooldown,
                                  t_in_epochs=not scaled, warmup_prefix=scaled, steps_per_epoch=len(loader))
    optimizer = create_optimizer(model, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay,
                                 momentum=config.momentum, clip_grad=config.clip_grad, lr_scheduler=scheduler)
    ema = ModelEma(model, decay=config.model_ema_decay) if config.model_ema else None
    scaler = paddle.amp.GradScaler(init_loss_scaling=2.0 ** 16) if amp == "float16" else None

    wrapped = model
    if world > 1:
        if config.sync_bn:
            wrapped = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(wrapped)
        wrapped = paddle.DataParallel(wrapped)
    reported: Set[str] = set()

    def run_eval(layer) -> Dict[str, Any]:
        results = evaluate(layer, val_set, batch_size=config.batch_size, num_workers=config.workers,
                           device=device, distributed=world > 1, progress=False, verbose=False,
                           skip_bad=config.skip_bad)
        report_skipped([(item["path"], item["reason"]) for item in results.get("skipped_images", [])])
        return results

    def report_skipped(items) -> None:
        for path, reason in items:
            if path not in reported:
                reported.add(path)
                log(f"skipped {path}: {reason}")

    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}
    args.update(data=str(Path(config.data).resolve()), output=str(output.resolve()))
    trainer = Trainer(wrapped, optimizer, loader, step=step, mixup=mixup,
                      scheduler=scheduler, ema=ema, amp=amp, scaler=scaler,
                      evaluate=run_eval if val_set is not None else None, eval_interval=config.eval_interval,
                      output=output, records=None, progress=config.progress, rank=rank,
                      identity=run_identity, args=args, log=log if rank == 0 else (lambda message: None),
                      run_folder=folder, on_skipped=report_skipped if rank == 0 else None)
    if checkpoint is not None:
        trainer.load_state(checkpoint, config.resume)
        if trainer.epoch >= config.epochs:
            raise ParameterError(f"{{resume}} already finished epoch {trainer.epoch - 1} of {config.epochs}: "
                                 f"pass a larger {{epochs:name}} to train on", resume=config.resume,
                                 epochs=config.epochs)
    if folder is not None:  # everything checked: now the records of a replaced run may go
        folder.replace_records()
        folder.carry_over(config.resume)
    if rank == 0:
        # A run resumed into a new folder carries the rows of its earlier epochs along.
        history = Path(config.resume).parent / "summary.csv" if config.resume else None
        trainer.records = Records(output, visualdl=config.visualdl, start_epoch=trainer.epoch, history=history)
    return trainer


class _quiet_head_warning:
    """Fine-tuning to another class count drops the checkpoint's classifier: say it in one line of
    the run's log instead of a UserWarning with a source line."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log

    def __enter__(self):
        import warnings

        self.catcher = warnings.catch_warnings(record=True)
        self.caught = self.catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self.catcher.__exit__(*exc)
        import warnings

        for warning in self.caught:
            text = str(warning.message)
            if "classifier weights not loaded" in text:
                self.log(f"note: {text.split(': classifier', 1)[0]}: a new classifier for this data's classes "
                         f"(the checkpoint's has another class count)")
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        return False


def train(config: TrainConfig, **hooks: Any) -> Dict[str, Any]:
    """Build (see build_trainer) and run; returns Trainer.fit's summary plus the output folder. On
    Ctrl-C, says where the last checkpoint is and how to continue, then re-raises."""
    trainer = build_trainer(config, **hooks)
    log = hooks.get("log", print)
    epochs = int(trainer.args.get("epochs", config.epochs))
    try:
        result = trainer.fit(epochs)
    except BaseException as error:
        last = trainer.output / "last.pdparams" if trainer.output is not None else None
        if trainer.rank == 0 and isinstance(error, KeyboardInterrupt):
            if last is not None and last.is_file():
                log(f"interrupted in epoch {trainer.epoch}; the last checkpoint is {last} (epochs 0-{trainer.epoch - 1} "
                    f"done); continue with: ppim-train --resume {last}")
            else:
                log(f"interrupted in epoch {trainer.epoch}, before the first checkpoint: nothing to resume")
        if trainer.created_folder is not None and not (last is not None and last.is_file()):
            if trainer.run_folder is not None:
                trainer.run_folder.release()
            shutil.rmtree(trainer.created_folder, ignore_errors=True)  # this run's, and it holds nothing
        raise
    finally:
        if trainer.records is not None:
            trainer.records.close()
    return {**result, "output": str(trainer.output)}
