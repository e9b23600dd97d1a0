"""Regenerate the Python protobuf/gRPC modules: `python -m query_gateway.pb.generate`.

The generated *_pb2*.py files are committed (with grpcio-tools and protobuf pinned in
pyproject.toml); tests/test_proto.py checks they match a fresh generation.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = sorted(p.relative_to(ROOT).as_posix() for p in Path(__file__).parent.glob("*.proto"))


def generate(out: Path = ROOT) -> None:
    """Run protoc (grpcio-tools) over every .proto here, writing modules under `out`."""
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = ["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *PROTOS]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
