"""Eager Paddle (ppim) against eager PyTorch on the same architecture: the forward pass and one
AdamW training step, in one interleaved run.

    python benchmarks/eager.py                          # lvvit_s: forward batch 8, train step batch 4
    python benchmarks/eager.py --variant onednn:FLAGS_use_mkldnn=1 --rounds 7 --json eager.json

Every variant runs in a worker process of its own (environment variables such as
MKL_DEBUG_CPU_TYPE or PPIM_TUNE_MATH act only before Paddle loads, and two OpenMP runtimes in one
process slow each other); the parent asks each worker in turn for one timed call per round, so a
shared machine's slow and fast moments fall on every variant alike. Reported: the median over
rounds, and each variant's speed relative to torch. Variants: ``paddle-untuned`` (PPIM_TUNE_MATH=0:
Paddle as it starts, one math thread), ``paddle`` (ppim's math tuning, see ppim.mathtune),
``torch`` (benchmarks/torch_reference.py, fp32, torch's default threads); more with
``--variant NAME:VAR=VALUE[,VAR=VALUE]`` (Paddle with extra environment variables). The train step
is ppim.training.step_timing.paddle_train_step's (AdamW, soft-target cross-entropy, a fixed batch)
and its torch twin (benchmarks/torch_train_step.py). Weights are random.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAG = "@@eager "
BASE_VARIANTS = {"paddle-untuned": {"PPIM_TUNE_MATH": "0"}, "paddle": {}, "torch": None}


def _reply(**data):
    sys.stdout.write(TAG + json.dumps(data) + "\n")
    sys.stdout.flush()


def worker(args) -> int:
    """Build the variant's model and steps, then answer {"task": "forward"|"train"} with seconds."""
    import numpy as np

    if args.worker == "torch":
        import torch  # before Paddle, which sets OMP_NUM_THREADS=1 as it loads (torch would follow it)
    import ppim  # before paddle: the math tuning must see Paddle not yet loaded
    import paddle

    from ppim.training.step_timing import paddle_train_step

    kwargs = json.loads(args.model_kwargs or "{}")
    paddle.seed(0)
    model = ppim.create_model(args.model, **kwargs)
    size = model.pretrained_cfg["input_size"][-1]
    batch = np.random.default_rng(0).standard_normal((args.forward_batch, 3, size, size)).astype("float32")
    if args.worker == "torch":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from torch_train_step import torch_step_factory
        from torch_reference import TorchLVViT

        block = model.blocks[0]
        torch.manual_seed(0)
        net = TorchLVViT(img_size=size, dim=block.attn.qkv.weight.shape[0], depth=len(model.blocks),
                         heads=block.attn.num_heads, skip_lam=block.skip_lam,
                         stem=model.patch_embed.conv1.weight.shape[0], classes=model.num_classes).eval()
        x = torch.from_numpy(batch)

        def forward():
            with torch.inference_mode():
                net(x).numpy()
        train = torch_step_factory(threads=args.threads)(model, args.train_batch)
        threads = torch.get_num_threads()
    else:
        if args.threads:
            paddle.base.core.set_num_threads(args.threads)
        model_for_train = ppim.create_model(args.model, **kwargs)
        model.eval()
        x = paddle.to_tensor(batch)

        def forward():
            with paddle.no_grad():
                model(x).numpy()
        train = paddle_train_step(model_for_train, args.train_batch)
        from ppim import mathtune

        threads = mathtune.paddle_threads()
    tasks = {"forward": forward, "train": lambda: sum(train())}
    for fn in tasks.values():  # warm-up: kernels chosen, buffers allocated
        fn()
    from ppim.mathtune import machine_summary

    _reply(ready=True, threads=threads, machine=machine_summary())
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            return 0
        start = time.perf_counter()
        tasks[request["task"]]()
        _reply(seconds=time.perf_counter() - start)
    return 0


def _parse_variants(extra):
    variants = dict(BASE_VARIANTS)
    for text in extra or ():
        name, _, assignments = text.partition(":")
        env = dict(item.split("=", 1) for item in assignments.split(",") if "=" in item)
        if not name or not env:
            raise ValueError(f"--variant {text!r}: expected NAME:VAR=VALUE[,VAR=VALUE]")
        variants[name] = env
    return variants


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lvvit_s")
    parser.add_argument("--model-kwargs", help="constructor arguments as JSON (tests, experiments)")
    parser.add_argument("--forward-batch", type=int, default=8)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="math threads of every variant (default: each library's own "
                        "choice, which is what users get)")
    parser.add_argument("--variant", action="append", help="NAME:VAR=VALUE[,VAR=VALUE] (repeatable)")
    parser.add_argument("--only", help="comma list of variants to run (default: all)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    try:
        variants = _parse_variants(args.variant)
        if args.only:
            variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    workers, times, threads, machine = {}, {}, {}, ""  # (the parent never loads Paddle: see the workers' env)
    for name, env in variants.items():
        if name == "torch":
            import importlib.util

            if importlib.util.find_spec("torch") is None:
                print("note: torch not installed: no torch variant", file=sys.stderr)
                continue
        environ = {k: v for k, v in os.environ.items() if k != "PPIM_TUNE_MATH"}
        environ.update(env or {})
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "torch" if env is None else "paddle",
                   "--model", args.model, "--forward-batch", str(args.forward_batch),
                   "--train-batch", str(args.train_batch)] + (["--threads", str(args.threads)] if args.threads
                                                              else []) + (["--model-kwargs", args.model_kwargs]
                                                              if args.model_kwargs else [])
        workers[name] = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environ)
        times[name] = {"forward": [], "train": []}

    def read(name):
        for line in workers[name].stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        raise RuntimeError(f"worker {name} exited (code {workers[name].wait()})")

    def ask(name, **request):
        workers[name].stdin.write(json.dumps(request) + "\n")
        workers[name].stdin.flush()
        return read(name)

    began = time.perf_counter()
    try:
        for name in workers:  # one at a time: start-up of one does not slow another's warm-up
            ready = read(name)
            threads[name], machine = ready["threads"], ready["machine"]
        for round_ in range(args.rounds):
            for task in ("forward", "train"):
                for name in workers:
                    times[name][task].append(ask(name, task=task)["seconds"])
            print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
                f"{n} {t['forward'][-1]:.2f}/{t['train'][-1]:.2f} s" for n, t in times.items()), file=sys.stderr,
                flush=True)
        for name in workers:
            ask_quit = workers[name]
            ask_quit.stdin.write(json.dumps({"quit": True}) + "\n")
            ask_quit.stdin.close()
            ask_quit.wait(timeout=60)
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.kill()
    rows = []
    reference = times.get("torch")
    for name, by_task in times.items():
        row = {"variant": name, "threads": threads.get(name), "env": variants[name]}
        for task, batch in (("forward", args.forward_batch), ("train", args.train_batch)):
            seconds = statistics.median(by_task[task])
            row[f"{task}_images_per_sec"] = batch / seconds
            row[f"{task}_round_seconds"] = by_task[task]
            if reference:
                row[f"{task}_vs_torch"] = statistics.median(reference[task]) / seconds
        rows.append(row)
    print(f"| variant | threads | forward b{args.forward_batch} img/s | vs torch | train b{args.train_batch} img/s "
          f"| vs torch |\n|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['threads']} | {row['forward_images_per_sec']:.2f} | "
              f"{row.get('forward_vs_torch', float('nan')):.2f}x | {row['train_images_per_sec']:.2f} | "
              f"{row.get('train_vs_torch', float('nan')):.2f}x |")
    load = os.getloadavg()
    print(f"({args.model}, {args.rounds} interleaved rounds, medians; {machine}; load average "
          f"{load[0]:.1f} at the end, {time.perf_counter() - began:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "machine": machine, "load_average": load, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
