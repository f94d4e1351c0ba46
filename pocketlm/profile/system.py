"""The measuring instruments: process memory (RSS and its high-water mark), the machine's identity and
library versions, and a measured memory-bandwidth ceiling."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from pathlib import Path

import torch


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}; RSS measurement needs Linux")


def rss_bytes() -> int:
    """Resident set size of this process now."""
    return _status_kb("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """RSS high-water mark since the process started or since the last `reset_peak_rss()`."""
    return _status_kb("VmHWM") * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def system_info(device: str = "cpu") -> dict:
    """What a measurement ran on: CPU, cores, ISA level, device, library versions."""
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "llama_cpp_python": _version("llama_cpp_python"),
        "gguf": _version("gguf"),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def memory_bandwidth_gbs(size_mb: int = 512, threads: int | None = None, repeats: int = 5,
                         dtype: torch.dtype = torch.float32) -> float:
    """Measured read bandwidth (GB/s): the best of `repeats` full reductions of a `size_mb` tensor.

    A sum reads every byte once and writes nothing, like a decode step reading the weights, so it is
    the ceiling a memory-bound decode can reach on this machine. The tensor must be far larger
    than the last-level cache.
    """
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        x = torch.ones(size_mb * 2**20 // torch.finfo(dtype).bits * 8, dtype=dtype)
        x.sum()  # touch
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            x.sum()
            best = min(best, time.perf_counter() - t0)
        return x.numel() * x.element_size() / best / 1e9
    finally:
        torch.set_num_threads(old)
