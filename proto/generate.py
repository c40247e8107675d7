"""Regenerate the Python gRPC modules from ``proto/*.proto`` (``make proto``)."""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    protos = sorted(str(p.relative_to(root)) for p in (root / "proto").glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{root}",
        f"-I{include}",
        f"--python_out={root}",
        f"--pyi_out={root}",
        f"--grpc_python_out={root}",
        *protos,
    ]
    return protoc.main(args)


if __name__ == "__main__":
    sys.exit(main())
