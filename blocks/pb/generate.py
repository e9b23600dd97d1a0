"""Regenerate the Python protobuf/gRPC modules of every package: `python -m blocks.pb.generate`.

Protos live with their users: the Prometheus wire types shared by remote-write and remote-read
in `blocks/pb/`, the remote-write subset in `ingest/pb/`, remote-read and Thanos in
`query_gateway/pb/`.

The generated *_pb2*.py files are committed (with grpcio-tools and protobuf pinned in
pyproject.toml); tests/test_proto.py checks they match a fresh generation.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIRS = ("blocks/pb", "ingest/pb", "query_gateway/pb")
PROTOS = sorted(p.relative_to(ROOT).as_posix() for d in PROTO_DIRS for p in (ROOT / d).glob("*.proto"))


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
