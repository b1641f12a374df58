"""The line that describes the machine a benchmark ran on."""

from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def describe(*packages: str) -> str:
    """One line: date, CPU, cores, memory, OS, Python and the named packages' versions."""
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        memory = f"{mem:.0f} GiB"
    except (ValueError, OSError):
        memory = "? GiB"
    load = "/".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    versions = " ".join(f"{p} {_version(p)}" for p in packages)
    return (
        f"machine: {datetime.date.today()} | {_cpu_model()} | {os.cpu_count()} cores | {memory} | "
        f"{platform.system()} {platform.release()} | {platform.python_implementation()} "
        f"{platform.python_version()} | load {load} | {versions}"
    )
