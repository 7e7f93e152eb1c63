"""``python -m bench [--quick] [--only SECTION ...] [--sizes N,N]``: see ``bench/__init__.py``."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import SECTION_MODULES, SECTIONS, Options, Row


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N[,N...], got {text!r}") from None
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return sizes


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "platform": platform.platform(),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def print_table(title: str, rows: list[Row]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key != "table" and key not in columns)
    if len(rows) == 1 and len(columns) > 12:  # one wide row: one line per field
        width = max(len(c) for c in columns)
        print(f"\n== {title} ==")
        for column in columns:
            print(f"{column.ljust(width)}  {_cell(rows[0].get(column))}")
        return
    cells = [columns] + [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    print(f"\n== {title} ==")
    for line in cells:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))


def print_section(name: str, rows: list[Row]) -> None:
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(str(row.get("table", name)), []).append(row)
    for table, group in groups.items():
        print_table(table if table == name else f"{name}: {table}", group)


def main(argv: list[str] | None = None) -> None:
    for module in SECTION_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small repeat counts (smoke test)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(SECTIONS),
        help="run only this section (repeatable; default: all)",
    )
    parser.add_argument(
        "--sizes", type=_sizes, help="problem sizes, e.g. 1,100 (default: each section's)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)

    names = args.only or list(SECTIONS)
    workdir = Path(tempfile.mkdtemp(prefix="mesh-bench-"))
    info = machine()
    print(
        f"machine: {info['nproc']} cpu(s), {info['cpu']}; Python {info['python']}, "
        f"grpcio {info['grpcio']}, protobuf {info['protobuf']}"
        + ("; --quick" if args.quick else "")
    )
    results: dict[str, list[Row]] = {}
    started = time.monotonic()
    failed = False
    try:
        for name in names:
            section_dir = workdir / name
            section_dir.mkdir()
            options = Options(quick=args.quick, sizes=args.sizes, workdir=section_dir)
            t0 = time.monotonic()
            rows = SECTIONS[name](options)
            print_section(name, rows)
            print(f"({name}: {time.monotonic() - t0:.1f}s)")
            results[name] = rows
    except BaseException:
        failed = True
        print(f"bench: failed; logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        if not failed and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = {
        "machine": info,
        "quick": args.quick,
        "sizes": list(args.sizes) if args.sizes else None,
        "seconds": round(time.monotonic() - started, 1),
        "results": results,
    }
    # The datapath figures operators' scripts read (direct_p50_us, mesh_p50_us, admit_ns, …)
    # also stand at the top level of the final line.
    for row in results.get("datapath", []):
        if row.get("table") == "summary":
            summary.update({k: v for k, v in row.items() if k != "table"})
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
