"""What the worker's device can do: the precision to train in and the peak it is measured against.

Pure functions of what torch reports about a device (compute capability, name), so the
choices are testable on any machine with the capabilities given by hand. Never imports
ray or torch.
"""

from __future__ import annotations

import re

# bf16 tensor cores arrived with Ampere (compute capability 8.0: A100, A10, L4, H100, ...).
# Older GPUs (V100 7.0, T4 7.5) have fp16 tensor cores only, and Accelerate refuses bf16 there.
BF16_MIN_CAPABILITY = (8, 0)

# Dense (no sparsity) bf16/fp16 tensor-core peak per GPU, FLOP/s, from NVIDIA's datasheets
# (which print the sparse figure, twice the dense one, with an asterisk). First match wins,
# so more specific names come first ("H100 PCIe" before "H100", "A100" before "A10").
# Sources: H100 / H200 datasheets (SXM 989 TFLOPS, PCIe 756, NVL 835); A100 datasheet (312);
# L40S datasheet (362); L4 datasheet (121); A10 datasheet (125); V100 datasheet (SXM2 125,
# PCIe 112, fp16 only); T4 datasheet (65, fp16 only). The A10G (AWS g5) has no published
# NVIDIA datasheet, so it gets no MFU rather than a guessed one.
TFLOPS = 1e12
PEAK_FLOPS = [
    (r"\bH100\b.*\bPCIe\b", 756 * TFLOPS),
    (r"\bH100\b.*\bNVL\b", 835 * TFLOPS),
    (r"\bH100\b", 989 * TFLOPS),  # SXM5 ("NVIDIA H100 80GB HBM3")
    (r"\bH200\b.*\bNVL\b", 835 * TFLOPS),
    (r"\bH200\b", 989 * TFLOPS),
    (r"\bA100\b", 312 * TFLOPS),
    (r"\bL40S\b", 362 * TFLOPS),
    (r"\bL4\b", 121 * TFLOPS),
    (r"\bA10\b", 125 * TFLOPS),
    (r"\bV100\b.*\bPCIE\b", 112 * TFLOPS),
    (r"\bV100\b", 125 * TFLOPS),
    (r"\bT4\b", 65 * TFLOPS),
]


def choose_precision(requested: str, capability: tuple | None) -> str:
    """The Accelerate `mixed_precision` for `requested` ("auto", "no", "bf16", "fp16") on a
    device of CUDA compute `capability` (major, minor), or None for a CPU.

    auto: bf16 where the GPU has bf16 tensor cores, else fp16 (with a loss scaler), and fp32
    ("no") on a CPU, where bf16 matmuls are slow on most parts. An explicit choice the
    device cannot run is refused here, with the fix, rather than by Accelerate on the worker.
    """
    if requested == "auto":
        if capability is None:
            return "no"
        return "bf16" if tuple(capability) >= BF16_MIN_CAPABILITY else "fp16"
    if requested == "fp16" and capability is None:
        raise ValueError("Task(precision='fp16') needs a CUDA GPU (fp16 autocast with a loss scaler); "
                         "on CPU use precision='auto' (fp32) or 'bf16'.")
    if requested == "bf16" and capability is not None and tuple(capability) < BF16_MIN_CAPABILITY:
        raise ValueError(
            f"Task(precision='bf16') on a GPU of compute capability {capability[0]}.{capability[1]}, "
            f"which has no bf16 tensor cores (needs {BF16_MIN_CAPABILITY[0]}.{BF16_MIN_CAPABILITY[1]}+); "
            "use precision='auto' or 'fp16'."
        )
    return requested


def peak_flops(device_name: str | None, precision: str) -> float | None:
    """Dense bf16/fp16 peak FLOP/s of one GPU named `device_name` (torch.cuda.get_device_name),
    or None: a CPU, fp32 training (its peak is another figure), or a GPU not in PEAK_FLOPS."""
    if not device_name or precision not in ("bf16", "fp16"):
        return None
    for pattern, flops in PEAK_FLOPS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return flops
    return None
