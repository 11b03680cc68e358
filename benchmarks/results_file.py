"""Append a measured section to benchmarks/RESULTS.md (the machine and command included)."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    import torch

    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = "none"
    return (f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, ray {ray_version}")


def append_result(title: str, command: str, lines: list, label: str = "") -> None:
    today = datetime.date.today().isoformat()
    head = f"## {title} ({today}{', ' + label if label else ''})"
    body = "\n".join(["", head, "", f"Command: `{command}`  ", f"Machine: {machine()}", "", "```", *lines, "```", ""])
    with RESULTS.open("a") as f:
        f.write(body)
