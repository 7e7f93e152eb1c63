"""Generates the Python code for ``protos/`` into the ``mesh`` package.

``python -m control._protogen --out .`` rewrites the generated files;
``--check`` regenerates into a temporary directory and exits non-zero, naming
the files, when the committed code differs from what the protos produce.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
GENERATED = "mesh"


def generate(out: Path) -> None:
    """Writes the generated package ``mesh`` under ``out``."""
    from grpc_tools import protoc  # dev dependency, imported only when generating

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for directory in [out / GENERATED, *(p for p in (out / GENERATED).rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    (out / GENERATED / "py.typed").touch()


def stale_files(root: Path = ROOT) -> list[str]:
    """Returns the generated files under ``root`` that differ from fresh output."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        wanted = {p.relative_to(fresh) for p in (fresh / GENERATED).rglob("*") if p.is_file()}
        have = {
            p.relative_to(root)
            for p in (root / GENERATED).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
        problems = [f"{p}: missing" for p in sorted(wanted - have)]
        problems += [f"{p}: not produced by protos/ (remove it)" for p in sorted(have - wanted)]
        problems += [
            f"{p}: differs from protos/"
            for p in sorted(wanted & have)
            if not filecmp.cmp(fresh / p, root / p, shallow=False)
        ]
        return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT)
    parser.add_argument("--check", action="store_true")
    ns = parser.parse_args()
    if ns.check:
        problems = stale_files()
        if problems:
            sys.stderr.write("generated code is stale; run `make proto`:\n")
            sys.stderr.write("".join(f"  {p}\n" for p in problems))
            raise SystemExit(1)
        return
    generate(ns.out)


if __name__ == "__main__":
    main()
