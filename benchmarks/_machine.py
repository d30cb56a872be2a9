"""What every benchmark records about the machine it ran on (imported by the scripts here)."""

from __future__ import annotations

import os
import platform
import subprocess

import torch


def cpu() -> dict:
    """The CPU model, its vector flags, torch threads and the load average now."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = info.get("Flags", "").split()
    return {"model": info.get("Model name", platform.processor()).strip(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "flags": [f for f in flags if f.startswith(("avx", "amx")) or f == "fma"],
            "loadavg_at_start": os.getloadavg()[0]}
