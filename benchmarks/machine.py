"""What the numbers were measured on: the CPU, the devices, the versions."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

import flax
import jax
import optax

import lyapopt


def cpu_model() -> str:
    """``lscpu``'s model name, else /proc/cpuinfo's, else platform's."""
    try:
        out = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True
        ).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    devices = jax.devices()
    gpus = [d for d in devices if d.platform == "gpu"]
    return {
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "flax": flax.__version__,
        "lyapopt": lyapopt.__version__,
        "backend": jax.default_backend(),
        "devices": ", ".join(d.device_kind for d in devices),
        "gpu": ", ".join(d.device_kind for d in gpus)
        if gpus
        else "none available in this session, so there is no GPU table.",
    }
