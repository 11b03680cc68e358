"""The worker loop's GPU-facing parts, checked on CPU: gradient accumulation, precision from
the device, fp16 loss-scaler bookkeeping, the prefetching data path, hardware use, and the
refusal to train on CPU after reserving a GPU."""

import io
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import flops_fit as ff
from flops_fit import checkpointing, device, prefetch
from flops_fit import train
from flops_fit.hardware import PEAK_FLOPS, TFLOPS, choose_precision, peak_flops
from flops_fit.plan import SweepPoint
from driver_side import KillWorkerOnce, job_result, load_example
from worker_side import tiny_task

TESTS_DIR = Path(__file__).resolve().parent


# --- configuration: checked before any compute -------------------------------------------------
def test_micro_batch_must_divide_the_global_batch(tmp_path):
    with pytest.raises(ValueError, match="not a multiple of micro_batch_size=3"):
        tiny_task(tmp_path, batch_size=8, micro_batch_size=3)
    with pytest.raises(ValueError, match="larger than batch_size"):
        tiny_task(tmp_path, batch_size=8, micro_batch_size=16)
    with pytest.raises(ValueError, match="micro_batch_size"):
        tiny_task(tmp_path, micro_batch_size=-1)


def test_accumulation_steps_per_group_size(tmp_path):
    task = tiny_task(tmp_path, batch_size=16, micro_batch_size=2)
    assert [task.accumulation_steps(w) for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    assert tiny_task(tmp_path, batch_size=16).accumulation_steps(2) == 1  # 0: the whole share
    # 16 over 3 workers is uneven; 16 over 16 workers leaves 1 sample each, less than a micro-batch.
    with pytest.raises(ValueError, match="not divisible by num_workers=3"):
        task.accumulation_steps(3)
    with pytest.raises(ValueError, match=r"multiple of num_workers x micro_batch_size \(32\)"):
        task.accumulation_steps(16)


def test_run_sweep_refuses_a_batch_that_does_not_split_into_micro_batches(tmp_path):
    task = tiny_task(tmp_path, batch_size=8, micro_batch_size=4)
    plan = ff.plan_sweep(task, [1e10], sizes=[1])
    with pytest.raises(ValueError, match="micro_batch_size"):  # before Ray is even started
        ff.run_sweep(task, plan, name="uneven", storage_path=tmp_path / "runs", num_workers=4)


# --- precision from the device ----------------------------------------------------------------
@pytest.mark.parametrize("capability, expected", [
    (None, "no"),  # CPU: fp32
    ((7, 0), "fp16"),  # V100: no bf16 tensor cores
    ((7, 5), "fp16"),  # T4
    ((8, 0), "bf16"),  # A100
    ((8, 6), "bf16"),  # A10 / A10G
    ((8, 9), "bf16"),  # L4 / L40S
    ((9, 0), "bf16"),  # H100 / H200
])
def test_auto_precision_for_each_kind_of_device(capability, expected):
    assert choose_precision("auto", capability) == expected


def test_explicit_precision_the_device_cannot_run_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="no bf16 tensor cores.*'fp16'"):
        choose_precision("bf16", (7, 5))
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        choose_precision("fp16", None)
    assert choose_precision("fp16", (9, 0)) == "fp16" and choose_precision("no", (9, 0)) == "no"


def test_make_accelerator_asks_the_device(tmp_path, monkeypatch):
    # The capability torch reports decides; faked here, the CPU path is real.
    seen = []
    monkeypatch.setattr(device, "choose_precision", lambda p, c: seen.append((p, c)) or "no")
    accelerator = device.make_accelerator(tiny_task(tmp_path))
    assert seen == [("auto", None)] and accelerator.mixed_precision == "no"
    assert accelerator.device.type == "cpu"


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835),
    ("NVIDIA H200", 989), ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100 80GB PCIe", 312),
    ("NVIDIA L4", 121), ("NVIDIA L40S", 362), ("NVIDIA A10", 125), ("Tesla V100-SXM2-16GB", 125),
    ("Tesla T4", 65), ("NVIDIA A10G", None), ("NVIDIA GeForce GTX 1080", None),
])
def test_dense_peak_by_device_name(name, peak):
    assert peak_flops(name, "bf16") == (peak * TFLOPS if peak else None)


def test_no_peak_for_cpus_or_fp32():
    assert peak_flops(None, "bf16") is None
    assert peak_flops("NVIDIA H100 80GB HBM3", "no") is None
    assert all(f > 0 for _, f in PEAK_FLOPS)


# --- the worker loop's pieces, in-process ---------------------------------------------------------
class _Data(torch.utils.data.Dataset):
    """Sample i is a pair (x_i, y_i) of a fixed random regression problem."""

    def __init__(self, n=64, dim=4, bad=()):
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, dim, generator=g), torch.randn(n, 1, generator=g)
        self.bad = set(bad)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i] * (math.inf if i in self.bad else 1.0)
        return x, self.y[i]


def _mse(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def _linear(size):
    return torch.nn.Linear(4, 1)


def _run(task, scaler=None, data=None, steps=10):
    """A train.Run as the loop's set-up builds it, without Ray (world of one)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(cpu=True)
    if scaler is not None:
        # The loss scaler Accelerate makes for fp16 on a GPU; torch's CPU one behaves the same.
        accelerator.scaler = scaler
    torch.manual_seed(task.seed)
    net = task.model_fn(1)
    optimizer = train.adamw(net, task, 1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: train.lr_multiplier(s, steps, task.warmup_fraction, task.min_lr_fraction))
    model, optimizer = accelerator.prepare(net, optimizer)
    point = SweepPoint(point_id="p", budget=1.0, size=1, params=5, tokens=steps * task.batch_tokens,
                       steps=steps, flops=1.0, flops_per_token=30.0)
    data = data or _Data()
    return train.Run(point=point, task=task, rank=0, world=1, accum=task.accumulation_steps(1),
                  accelerator=accelerator, model=model, net=net, optimizer=optimizer, scheduler=scheduler,
                  train_set=data, val_set=data, peak_flops=None, meta={"started_at": 0.0, "attempts": 1})


def _task(**kw):
    settings = dict(model_fn=_linear, data=lambda: (_Data(), _Data()), loss_fn=_mse, tokens_per_sample=1,
                    batch_size=8, warmup_fraction=0.2)
    settings.update(kw)
    return ff.Task(**settings)


def _train_steps(run, steps):
    batches = prefetch.Prefetcher(run)
    try:
        return [train.optimizer_step(run, batches.next()).item() for _ in range(steps)]
    finally:
        batches.close()


def test_micro_batches_make_the_same_update_as_the_whole_batch():
    whole, micro = _run(_task()), _run(_task(micro_batch_size=2))
    assert (whole.accum, micro.accum) == (1, 4)
    losses_whole, losses_micro = _train_steps(whole, 5), _train_steps(micro, 5)
    assert losses_micro == pytest.approx(losses_whole, rel=1e-6)
    for a, b in zip(whole.net.parameters(), micro.net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert whole.step == micro.step == 5


# depth 0: built when taken (the default on a CPU); PREFETCH_STEPS: built ahead in a thread
# (the default on a GPU).
BATCH_DEPTHS = [0, prefetch.PREFETCH_STEPS]


@pytest.mark.parametrize("depth", BATCH_DEPTHS)
def test_prefetched_batches_are_the_planned_sample_positions(depth):
    run = _run(_task(micro_batch_size=2))
    run.step = 3  # as after a resume
    order = __import__("numpy").random.default_rng(run.task.seed).permutation(len(run.train_set))
    batches = prefetch.Prefetcher(run, depth)
    try:
        for step in (3, 4, 5):
            got = batches.next()
            positions = prefetch.shard_positions(step, 8, 0, 1)
            assert len(got) == 4  # micro-batches of 2
            want_x = torch.stack([run.train_set[int(order[p % len(order)])][0] for p in positions])
            torch.testing.assert_close(torch.cat([x for x, _ in got]), want_x, rtol=0, atol=0)
    finally:
        batches.close()


@pytest.mark.slow  # torch.compile builds C++ kernels: tens of seconds on 2 cores
def test_compiled_model_trains_like_the_eager_one():
    eager, compiled = _run(_task()), _run(_task(compile=True))
    for run in (eager, compiled):  # as _setup builds them
        settings = {"lr": 1e-2, "warmup": run.task.warmup_fraction}  # the peak LR _run uses
        run.net, run.model, run.optimizer, run.scheduler = train.build(run.point, run.task, run.accelerator, settings)
    assert type(compiled.model).__name__ == "OptimizedModule" and compiled.model is not compiled.net
    assert _train_steps(compiled, 3) == pytest.approx(_train_steps(eager, 3), rel=1e-5)
    # The bare module holds the trained weights (what checkpoints and evaluation use).
    torch.testing.assert_close(compiled.net.weight, eager.net.weight, rtol=1e-5, atol=1e-6)


def _prefetch_threads() -> int:
    return sum(t.name == "flops_fit-prefetch" for t in threading.enumerate())


def test_a_cpu_worker_builds_batches_in_the_training_thread():
    run = _run(_task())
    before = _prefetch_threads()
    inline, ahead = prefetch.Prefetcher(run), prefetch.Prefetcher(run, prefetch.PREFETCH_STEPS)
    try:
        assert _prefetch_threads() == before + 1  # only the explicit one
        torch.testing.assert_close(inline.next(), ahead.next(), rtol=0, atol=0)
    finally:
        inline.close()
        ahead.close()
    assert _prefetch_threads() == before


def test_map_tensors_reaches_every_tensor_and_keeps_the_containers():
    from collections import OrderedDict, namedtuple

    Pair = namedtuple("Pair", "x y")
    batch = OrderedDict(ids=torch.ones(2), pair=Pair(torch.zeros(1), [torch.ones(1), (torch.ones(3), "tag")]), n=3)
    out = device.map_tensors(lambda t: t + 1, batch)
    assert type(out) is OrderedDict and list(out) == ["ids", "pair", "n"]
    assert type(out["pair"]) is Pair and type(out["pair"].y) is list and type(out["pair"].y[1]) is tuple
    assert out["ids"].tolist() == [2, 2] and out["pair"].x.tolist() == [1]
    assert out["pair"].y[0].tolist() == [2] and out["pair"].y[1][0].tolist() == [2, 2, 2]
    assert out["pair"].y[1][1] == "tag" and out["n"] == 3  # not tensors: kept as they are
    assert batch["ids"].tolist() == [1, 1]  # the input batch is left alone


@pytest.mark.parametrize("depth", BATCH_DEPTHS)
def test_a_failing_sample_is_raised_in_the_training_thread(depth):
    class Broken(_Data):
        def __getitem__(self, i):
            raise OSError("disk gone")

    run = _run(_task(), data=Broken())
    batches = prefetch.Prefetcher(run, depth)
    try:
        with pytest.raises(RuntimeError, match="step 0 failed.*disk gone"):
            batches.next()
    finally:
        batches.close()


def _bad_positions(run, step):
    """Sample indices of `step`'s batch (inf inputs there make inf gradients)."""
    import numpy as np

    order = np.random.default_rng(run.task.seed).permutation(len(run.train_set))
    return {int(order[p]) for p in prefetch.shard_positions(step, run.task.batch_size, 0, 1)}


def test_fp16_skipped_step_leaves_the_schedule_alone_and_the_scale_is_checkpointed():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    probe = _run(_task())
    data = _Data(bad=_bad_positions(probe, 1))  # step 1's gradients are inf
    run = _run(_task(), scaler=scaler, data=data)
    _train_steps(run, 1)
    assert run.skipped_steps == 0 and run.scheduler.last_epoch == 1
    lr_before, weights_before = run.scheduler.get_last_lr()[0], run.net.weight.detach().clone()
    batches = prefetch.Prefetcher(run)  # resumes at step 1: the bad batch
    try:
        train.optimizer_step(run, batches.next())
    finally:
        batches.close()
    assert run.optimizer.step_was_skipped
    assert run.skipped_steps == 1
    assert run.step == 2  # the data moves on: the tokens were spent
    assert run.scheduler.last_epoch == 1 and run.scheduler.get_last_lr()[0] == lr_before
    torch.testing.assert_close(run.net.weight, weights_before, rtol=0, atol=0)
    assert scaler.get_scale() == 2.0**15  # backed off

    # Through bytes, as a checkpoint travels (and loaded as checkpointing.load_checkpoint loads it).
    buffer = io.BytesIO()
    torch.save(checkpointing.checkpoint_state(run), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = _run(_task(), scaler=torch.amp.GradScaler("cpu", init_scale=2.0**16), data=data)
    checkpointing.resume(resumed, state)
    assert resumed.accelerator.scaler.get_scale() == 2.0**15
    assert (resumed.step, resumed.skipped_steps, resumed.scheduler.last_epoch) == (2, 1, 1)
    assert resumed.meta["attempts"] == 2 and resumed.base["restored_from_step"] == 2
    # Both continue identically from there.
    assert _train_steps(resumed, 3) == _train_steps(run, 3)


def test_gpu_reserved_without_cuda_fails_with_the_node_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(device, "reserved_gpus", lambda: ["0"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(RuntimeError) as e:
        device.make_accelerator(tiny_task(tmp_path))
    text = str(e.value)
    assert "CUDA_VISIBLE_DEVICES='0'" in text and os.uname().nodename in text
    assert "without use_gpu" in text and "driver" in text


def test_hardware_use_in_the_progress_line():
    from flops_fit.results import hardware_use

    assert hardware_use({"model_flops_per_s": 4.2e14, "mfu": 0.42}) == "420,000.0 GFLOP/s, MFU 42.0 %  "
    assert hardware_use({"model_flops_per_s": 3.0e9, "mfu": None}) == "3.0 GFLOP/s  "
    assert hardware_use({}) == ""


# --- through a real Ray sweep -----------------------------------------------------------------------
@pytest.mark.slow
def test_accumulated_micro_batches_reach_the_workers_and_resume_exactly(ray_session, tmp_path):
    from ray import tune

    class KillOnce(KillWorkerOnce, tune.Callback):
        pass

    # That micro-batches make the whole batch's update is pinned without Ray
    # (test_micro_batches_make_the_same_update_as_the_whole_batch); here, through a sweep:
    # the setting reaches the workers, and a killed worker resumes mid-accumulation exactly.
    settings = dict(batch_size=8, checkpoint_every=40, report_every=20)
    micro = tiny_task(tmp_path, micro_batch_size=2, **settings)
    plan = ff.plan_sweep(micro, [1e10], sizes=[2])
    runs = dict(storage_path=tmp_path / "runs", live_fit=False, verbose=False)
    four = ff.run_sweep(micro, plan, name="micro", **runs).table.iloc[0]
    killer = KillOnce()
    killed = ff.run_sweep(micro, plan, name="micro-killed", callbacks=[killer], **runs).table.iloc[0]

    assert (four.status, killed.status) == ("ok", "ok"), (four.error, killed.error)
    assert four.micro_batch_size == killed.micro_batch_size == 2
    # The budget is the same: tokens per optimizer step do not depend on the micro-batch.
    assert four.tokens == killed.tokens == plan.points[0].tokens
    assert killer.killed is not None and killed.attempts == 2
    assert killed.loss == pytest.approx(four.loss, rel=1e-6)
    assert four.model_flops_per_s > 0 and four.precision == "no" and math.isnan(float(four.mfu or math.nan))


@pytest.mark.slow
def test_a_gpu_point_on_a_node_without_cuda_fails_instead_of_training_on_cpu(tmp_path):
    r = job_result("gpu_node_without_cuda.py", tmp_path, timeout=300)
    assert r["status"] == "failed", r
    assert "no usable CUDA device" in r["error"] and "CUDA_VISIBLE_DEVICES" in r["error"], r["error"]
    assert r["tokens"] is None, "a step was trained (on the CPU)"


# --- benchmarks/gpu_check.py ------------------------------------------------------------------------
GPU_CHECK = TESTS_DIR.parent / "benchmarks" / "gpu_check.py"


def test_gpu_check_documents_itself():
    out = subprocess.run([sys.executable, str(GPU_CHECK), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for words in ("MFU", "torch.compile", "dry run", "2 workers", "RESULTS.md", "refuses"):
        assert words in out.stdout, words


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_check_refuses_without_a_gpu():
    out = subprocess.run([sys.executable, str(GPU_CHECK), "--no-write"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert "needs a CUDA GPU" in out.stderr and "CUDA_VISIBLE_DEVICES" in out.stderr


def test_examples_take_the_gpu_flags(tmp_path):
    sweep = load_example("sweep")
    args = sweep.parse_args(["--micro-batch-size", "4", "--precision", "no", "--compile",
                             "--data", str(TESTS_DIR)])
    task = sweep.make_task(args)
    assert (task.micro_batch_size, task.precision, task.compile) == (4, "no", True)
    with pytest.raises(SystemExit):  # argparse refuses an unknown precision
        sweep.parse_args(["--precision", "fp8"])
