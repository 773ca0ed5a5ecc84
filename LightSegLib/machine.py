"""Machine facts that travel with every speed figure: the CPU, its vector instruction sets and its cores."""
from __future__ import annotations

import os
import platform
from pathlib import Path

ISA_FLAGS = {"AVX2": "avx2", "AVX-512": "avx512f", "AVX512-VNNI": "avx512_vnni", "AVX-VNNI": "avx_vnni",
             "AVX512-BF16": "avx512_bf16", "AMX": "amx_tile"}


def machine() -> dict:
    """Where a figure was measured: CPU model, the instruction sets that change kernel speed, and cores.

    ONNX Runtime picks its kernels by CPUID at run time (the PyPI wheel has no switch to cap them at AVX2), so
    a figure from an AVX-512 machine is not a laptop figure: the flags travel with every result. A cloud VM's
    model name ("AMD EPYC") hides the generation; the CPUID family and model tell them apart (two such 2-core
    AVX2 machines differed 1.5-1.8x in speed)."""
    model, flags, ident = "", None, {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and not model:
                model = value
            elif key in ("cpu family", "model") and key not in ident:
                ident[key] = value
            elif key == "flags" and flags is None:
                flags = set(value.split())
    except OSError:  # not Linux: no flags to read
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": model or platform.processor() or platform.machine(), "cpu_count": cores,
            "isa": None if flags is None else {name: flag in flags for name, flag in ISA_FLAGS.items()}}
    if len(ident) == 2:
        info["cpuid"] = f"family {ident['cpu family']} model {ident['model']}"
    return info


def machine_line(info: dict, threads: int | None = None) -> str:
    isa = info.get("isa")
    if isa is None:
        text = "instruction sets unknown"
    else:
        has = [k for k, v in isa.items() if v]
        lacks = [k for k, v in isa.items() if not v]
        text = f"has {', '.join(has)}; no {', '.join(lacks) or 'other'}" if has else f"none of {', '.join(lacks)}"
    ident = f"{info['cpuid']}, " if info.get("cpuid") else ""
    return (f"{info['cpu']} ({ident}{info['cpu_count']} cores available), {text}"
            + (f"; {threads} threads" if threads else ""))


def widest_isa(line: str) -> str | None:
    """The widest vector instruction set a ``machine_line`` says the CPU has ("AVX-512", "AVX2"), or None: it
    decides the kernels' speed, so a recorded figure names it."""
    has = line.partition("has ")[2].partition(";")[0].split(", ")
    return next((name for name in ("AVX-512", "AVX2") if name in has), None)
