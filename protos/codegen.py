"""Generate the committed protobuf and gRPC code beside ``protos/agent.proto``.

    python -m protos.codegen          # rewrite protos/agent_pb2*.py(i)
    python -m protos.codegen --check  # exit 1 if the committed files differ from agent.proto

Needs ``grpcio-tools`` (the ``dev``/``test`` extra); boards never run this.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ("protos/agent.proto", "protos/onnx_subset.proto")
GENERATED = ("agent_pb2.py", "agent_pb2.pyi", "agent_pb2_grpc.py",
             "onnx_subset_pb2.py", "onnx_subset_pb2.pyi")


def generate(out_dir: Path) -> None:
    """Run protoc (from grpcio-tools) for every proto into ``out_dir/protos``."""
    try:
        from grpc_tools import protoc  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("grpcio-tools is missing: pip install -e '.[test]'") from exc
    import importlib.resources

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    (out_dir / "protos").mkdir(parents=True, exist_ok=True)
    for proto in PROTOS:
        args = [
            "protoc",
            f"-I{ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(ROOT / proto),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protos.codegen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="compare instead of writing; exit 1 when the committed code is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = []
        for name in GENERATED:
            fresh = (Path(tmp) / "protos" / name).read_bytes()
            committed = ROOT / "protos" / name
            if args.check:
                if not committed.exists() or committed.read_bytes() != fresh:
                    stale.append(name)
            else:
                committed.write_bytes(fresh)
    if stale:
        print(f"stale generated code: {', '.join(stale)}; run: python -m protos.codegen",
              file=sys.stderr)
        return 1
    print("protos: generated code is up to date" if args.check else "protos: regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
