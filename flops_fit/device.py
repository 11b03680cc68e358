"""The worker's device: the Accelerator of one attempt, its precision, moving batches there,
and giving the memory back.

Apart from the loop (train.py) because it is where the worker meets the hardware: the
checks that a GPU reserved from Ray is one torch can use, the precision the device
supports, and the batch handling that `plan.py` and `task.py` also need on the meta device.
Imports neither torch nor ray at module level, so those modules can import it cheaply.
"""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import Mapping
from typing import Any, Callable

from .hardware import choose_precision


def make_accelerator(task):
    """A fresh Accelerator for this attempt, in the precision the device supports.

    A worker that reserved a GPU but sees no usable CUDA device fails here, at once: training
    on the CPU of a GPU node would spend the point's whole budget at a hundredth of the speed.
    """
    import torch
    from accelerate import Accelerator

    gpus = reserved_gpus()
    if gpus and not torch.cuda.is_available():
        raise RuntimeError(_no_cuda_message(gpus))
    on_gpu = torch.cuda.is_available()
    capability = torch.cuda.get_device_capability() if on_gpu else None
    precision = choose_precision(task.precision, capability)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return Accelerator(mixed_precision=precision, cpu=not on_gpu)
    # A group of one: Ray's torch backend sets LOCAL_RANK even then, so Accelerate would
    # take it for a distributed run and wrap the model in DistributedDataParallel, whose
    # gradient bucketing and all-reduce cost time on every step for nothing
    # (benchmarks/RESULTS.md, "Defaults measured once"). Without it Accelerate sees the
    # single process it is.
    local_rank = os.environ.pop("LOCAL_RANK", None)
    try:
        return Accelerator(mixed_precision=precision, cpu=not on_gpu)
    finally:
        if local_rank is not None:
            os.environ["LOCAL_RANK"] = local_rank


def reserved_gpus() -> list:
    """The GPU ids Ray assigned to this worker (empty for a CPU worker or outside Ray)."""
    import ray

    return list(ray.get_gpu_ids()) if ray.is_initialized() else []


def _no_cuda_message(gpus: list) -> str:
    import torch

    return (
        f"This worker reserved GPU(s) {gpus} on node {socket.gethostname()} but torch sees no usable "
        f"CUDA device (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, "
        f"torch {torch.__version__}, built for CUDA {torch.version.cuda}). Install a CUDA build of "
        "torch that the node's NVIDIA driver supports (nvidia-smi shows the driver's CUDA version), "
        "or run without use_gpu / --gpu to train on CPUs."
    )


def device_name(accelerator) -> str | None:
    """The CUDA device's name (what hardware.peak_flops looks up), or None off a GPU."""
    import torch

    if accelerator.device.type != "cuda":
        return None
    return torch.cuda.get_device_name(accelerator.device)


def map_tensors(fn: Callable, batch: Any) -> Any:
    """`batch` with `fn` applied to every tensor in it, through mappings, lists and tuples
    (named ones too) at any depth; anything else is kept as it is. The shapes
    `torch.utils.data.default_collate` returns, rebuilt with their own types."""
    import torch

    def walk(item):
        if isinstance(item, torch.Tensor):
            return fn(item)
        if isinstance(item, Mapping):
            mapped = {key: walk(value) for key, value in item.items()}
            try:
                return type(item)(mapped)
            except TypeError:  # a mapping type not built from a dict (as default_collate does)
                return mapped
        if isinstance(item, tuple) and hasattr(item, "_fields"):  # a namedtuple
            return type(item)(*(walk(value) for value in item))
        if isinstance(item, (list, tuple)):
            return type(item)(walk(value) for value in item)
        return item

    return walk(batch)


def to_device(batch, device):
    """`batch` with its tensors on `device`; the copy overlaps compute from pinned memory."""
    return map_tensors(lambda t: t.to(device, non_blocking=True), batch)


def release(accelerator, *objects) -> None:
    """Free the trial's memory: worker processes may outlive the trial."""
    import torch
    from accelerate.state import AcceleratorState

    accelerator.free_memory(*objects)
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    AcceleratorState._reset_state(reset_partial_state=False)
