"""The measurement glue of benchmarks/speed.py: the clock every timing reads, device synchronisation, peak memory
of a block, and the turn-taking medians (``interleaved_medians``) that keep ratios honest on a shared machine."""

from __future__ import annotations

import gc
import resource
import statistics
import time
from collections.abc import Callable

import torch

WARMUP = 3  # training steps not timed
MEMORY_STEPS = 2  # steps of a method run alone for its peak memory (the second holds AdamW's state and activations)


class Clock:
    """What every timing in the report reads: wall time (``time.perf_counter``), or on a CPU this process's CPU time
    (``time.process_time``: the time the work takes on a core of its own, whatever else the machine runs; with one
    thread it is the latency an unshared core would show). ``--clock auto``: CPU time on a CPU device with one
    torch thread, wall time otherwise (a GPU's work is not CPU time)."""

    fn = staticmethod(time.perf_counter)
    name = "wall time (time.perf_counter)"


def clock() -> float:
    return Clock.fn()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status(key: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in bytes (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_rss_peak() -> bool:
    """Hand freed heap pages back to the OS (glibc), then reset the kernel's resident-set high-water mark to the
    current RSS (Linux >= 4.0), if allowed."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory a block needed above what was in use when it started (each block builds its own models).

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, not the CUDA context or the allocator's cache).
    CPU: the process peak RSS. Where ``/proc/self/clear_refs`` is writable the peak is reset per block and read from
    ``VmHWM``; otherwise it is the delta of ``resource.getrusage().ru_maxrss``, which never goes down, so a block that
    needs less than an earlier one reads ~0. RSS counts whole pages and whatever the allocator keeps: coarse.
    """

    how = ""

    def __init__(self, device: torch.device):
        self.device = device
        self.bytes = float("nan")

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            PeakMemory.how = "CUDA max_memory_allocated above the allocation at the start"
        elif _reset_rss_peak() and _proc_status("VmHWM") is not None:
            self.mode, self.base = "hwm", _proc_status("VmRSS")
            PeakMemory.how = "CPU peak RSS (VmHWM, reset per measurement) above the RSS at the start; coarse"
        else:
            self.mode, self.base = "ru", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            PeakMemory.how = ("CPU max-RSS delta (getrusage; monotonic, so later smaller measurements read ~0); "
                              "very coarse")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            sync(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        elif self.mode == "hwm":
            self.bytes = _proc_status("VmHWM") - self.base
        else:
            self.bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base
        return False


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def interleaved_medians(fns: dict[str, Callable[[], object]], device, reps: int,
                       warmup: int = WARMUP) -> dict[str, float]:
    """Median seconds of each of ``fns`` over ``reps`` timed calls after ``warmup`` untimed ones, the calls taken in
    turn (one of each, then again), so that a machine whose load changes during the run slows every measurement
    alike: the ratios between them hold on a shared machine even when the absolute times do not."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + reps):
        for k, fn in fns.items():
            sync(device)
            t0 = clock()
            fn()
            sync(device)
            if i >= warmup:
                times[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}
