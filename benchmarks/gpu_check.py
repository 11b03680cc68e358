"""The worker loop on a GPU machine, in one command: MFU, a dry run, a short sweep, 2 workers.

    python benchmarks/gpu_check.py             # on a machine with 1+ NVIDIA GPUs; appends to RESULTS.md
    python benchmarks/gpu_check.py --no-write  # print only
    python benchmarks/gpu_check.py --steps 30 --size 8   # quicker, smaller

What it measures and runs, each side by side in one run:
  (1) MFU of a GPU-sized GPT (aspect 64: n_embd = 64 x n_layer, 64-channel heads,
      1024-token samples, byte vocabulary, bf16 where the GPU has it, else fp16) trained
      for --steps optimizer steps:
        (a) a plain PyTorch loop of the same model, batch and optimizer, in this process;
        (b) flops_fit's worker loop (one Ray Train worker on one GPU, through run_sweep),
            with --micro-batch-size micro-batches accumulated to the global batch;
        (c) both again with torch.compile (Task.compile=True).
      MFU = model FLOP/s / the GPU's dense bf16/fp16 peak (flops_fit/hardware.py), with the
      model FLOPs counted per token (attention included: plan_sweep(flops_convention="counted")).
      Goal on an H100/H200: MFU >= 40 % and worker / plain >= 0.97.
  (2) a one-GPU dry run of a 15-point plan through the whole Ray path (no training);
  (3) a short real sweep: 3 sizes of a small GPT at one budget, on the GPU, each `ok`;
  (4) with 2+ GPUs: one point on 2 workers x 1 GPU (DDP over NCCL), `ok`, with its MFU.
Figures go to benchmarks/RESULTS.md with the command, the GPU and the versions.

Without a CUDA GPU it refuses (exit status 2) and says why: its figures mean nothing on CPU.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ASPECT = 64  # n_embd per layer (nanochat's GPU setting)
HEAD_DIM = 64  # channels per attention head
SEQ_LEN = 1024  # tokens per sample
SIZE = 12  # layers: n_embd 768, about GPT-2 small without its vocabulary
BATCH_SIZE = 32  # samples per optimizer step (32k tokens)
MICRO_BATCH_SIZE = 16  # samples per forward/backward in the worker loop: 2 micro-batches
STEPS = 60  # optimizer steps per timed run; the first ones (warmup, compile) are excluded
WARMUP_STEPS = 10  # steps not timed in the plain loop (allocation, cuDNN/compile)


def refuse_without_gpu() -> None:
    import os

    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_check measures GPU use and needs a CUDA GPU, but torch "
            f"{torch.__version__} (CUDA build: {torch.version.cuda}) sees none "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). Run it on a GPU "
            "node with a CUDA build of torch; for the CPU figures run benchmarks/throughput.py.",
            file=sys.stderr,
        )
        raise SystemExit(2)


def make_task(cache: str, size: int, compile: bool, micro_batch_size: int):
    import flops_fit as ff
    from flops_fit.data import TextCorpus
    from flops_fit.models import GPT, lm_loss

    data = TextCorpus(seq_len=SEQ_LEN, cache_dir=cache)
    return ff.Task(
        model_fn=functools.partial(GPT.from_size, aspect=ASPECT, head_dim=HEAD_DIM,
                                   vocab_size=data.vocab_size, seq_len=SEQ_LEN),
        data=data, loss_fn=lm_loss, tokens_per_sample=SEQ_LEN, batch_size=BATCH_SIZE,
        micro_batch_size=micro_batch_size, lr=6e-4, compile=compile, eval_samples=64,
        # Reports every 10 steps: the worker loop's tokens/s is the last window's.
        report_every=10,
    )


def point_for(task, size: int, steps: int):
    """A one-point plan of exactly `steps` optimizer steps at `size`."""
    import flops_fit as ff

    probe = ff.plan_sweep(task, [1e18], sizes=[size], flops_convention="counted", min_steps=1)
    budget = steps * task.batch_tokens * probe.points[0].flops_per_token
    return ff.plan_sweep(task, [budget], sizes=[size], flops_convention="counted", min_steps=1)


def plain_mfu(point, task, peak: float, precision: str, steps: int) -> float:
    """Model FLOP/s / peak of a plain PyTorch loop: same model, batch, optimizer, autocast."""
    import numpy as np
    import torch
    from torch.utils.data import default_collate

    from flops_fit.train import adamw

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    torch.manual_seed(task.seed)
    model = task.model_fn(point.size).cuda()
    if task.compile:
        model = torch.compile(model)
    optimizer = adamw(model, task, 6e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    train_set, _ = task.data()
    order = np.random.default_rng(task.seed).permutation(len(train_set))
    micro = task.micro_batch_size or task.batch_size
    times = []
    for step in range(steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(0, task.batch_size, micro):
            start = step * task.batch_size + i
            batch = default_collate([train_set[int(order[p % len(order)])] for p in range(start, start + micro)])
            batch = batch.cuda(non_blocking=True)
            with torch.autocast("cuda", dtype=dtype):
                loss = task.loss_fn(model, batch)
            scaler.scale(loss / (task.batch_size // micro)).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), task.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times[WARMUP_STEPS:])
    return task.batch_tokens * point.flops_per_token / step_s / peak


def sweep_row(plan, task, storage, name, **kw):
    import flops_fit as ff

    res = ff.run_sweep(task, plan, name=name, storage_path=storage, use_gpu=True, live_fit=False,
                       verbose=False, **kw)
    return res.table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-write", action="store_true", help="print the figures, do not append to RESULTS.md")
    p.add_argument("--label", default="", help="a note for the RESULTS.md heading")
    p.add_argument("--size", type=int, default=SIZE, help="GPT layers (n_embd = 64 x size)")
    p.add_argument("--steps", type=int, default=STEPS, help="optimizer steps per timed run")
    p.add_argument("--micro-batch-size", type=int, default=MICRO_BATCH_SIZE,
                   help="samples per forward/backward (the global batch is 32)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile runs")
    args = p.parse_args(argv)
    refuse_without_gpu()

    import torch

    import flops_fit as ff
    from flops_fit.hardware import choose_precision, peak_flops
    from results_file import append_result

    name = torch.cuda.get_device_name(0)
    precision = choose_precision("auto", torch.cuda.get_device_capability(0))
    peak = peak_flops(name, precision)
    gpus = torch.cuda.device_count()
    work = Path(tempfile.mkdtemp(prefix="flops_fit-gpu-check-"))
    storage = str(work / "runs")
    lines = [f"GPU: {name} x {gpus}, precision {precision}, dense peak "
             f"{peak / 1e12:.0f} TFLOP/s" if peak else f"GPU: {name} x {gpus}: no known peak, MFU not computed"]
    try:
        for compile in ([False] if args.no_compile else [False, True]):
            task = make_task(str(work / "cache"), args.size, compile, args.micro_batch_size)
            plan = point_for(task, args.size, args.steps)
            point = plan.points[0]
            plain = plain_mfu(point, task, peak or float("nan"), precision, args.steps)
            row = sweep_row(plan, task, storage, f"mfu-{'compiled' if compile else 'eager'}").iloc[0]
            assert row.status == "ok", row.error
            loop = row.mfu if peak else float("nan")
            lines += [
                f"(1{'c' if compile else 'a/b'}) GPT size {args.size} ({point.params:,} params), "
                f"{'compiled' if compile else 'eager'}, batch {BATCH_SIZE} x {SEQ_LEN} tokens, "
                f"micro-batch {args.micro_batch_size}, {args.steps} steps:",
                f"    plain loop MFU {100 * plain:.1f} %; worker loop MFU {100 * loop:.1f} % "
                f"({row.model_flops_per_s / 1e12:.1f} TFLOP/s); worker / plain {loop / plain:.3f}",
            ]
        small = make_task(str(work / "cache"), 2, False, 0)
        dry_plan = ff.plan_sweep(small, [1e16, 1e17, 1e18], points_per_budget=5, candidate_sizes=range(1, 65))
        t = time.perf_counter()
        dry = sweep_row(dry_plan, small, storage, "dry-run", dry_run=True)
        lines.append(f"(2) dry run, {len(dry)} points on 1 GPU: {(dry.status == 'ok').sum()} ok "
                     f"in {time.perf_counter() - t:.0f} s")
        sweep_plan = ff.plan_sweep(small, [3e14], sizes=[2, 3, 4], min_steps=1)
        t = time.perf_counter()
        real = sweep_row(sweep_plan, small, storage, "short-sweep")
        lines.append(f"(3) real sweep, sizes 2-4 at 3e14 FLOPs: {list(real.status)}, losses "
                     f"{[round(x, 3) for x in real.loss]}, {time.perf_counter() - t:.0f} s")
        if gpus >= 2:
            task = make_task(str(work / "cache"), args.size, False, args.micro_batch_size)
            two = sweep_row(point_for(task, args.size, args.steps), task, storage, "two-workers",
                            num_workers=2).iloc[0]
            lines.append(f"(4) 2 workers x 1 GPU: {two.status}, MFU {100 * (two.mfu or float('nan')):.1f} %")
        else:
            lines.append("(4) 2 workers: skipped, 1 GPU")
    finally:
        import ray

        ray.shutdown()
    print("\n".join(lines))
    if not args.no_write:
        append_result("GPU check", "python benchmarks/gpu_check.py " + " ".join(argv or sys.argv[1:]),
                      lines, args.label)


if __name__ == "__main__":
    main()
