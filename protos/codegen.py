"""Generate the committed protobuf and gRPC code beside ``protos/agent.proto``.

    python -m edgetune.protos.codegen          # rewrite protos/agent_pb2*.py(i), onnx_subset_pb2.py(i)
    python -m edgetune.protos.codegen --check  # exit 1 if the committed files differ from the .proto files

The generator is pinned: grpcio-tools 1.62.3 (protoc 25.1, "Protobuf Python Version: 4.25.1").
Why that release: boards run Python 3.9/3.10 with whatever grpcio/protobuf their wheels allow,
and generated code from newer grpcio-tools refuses older runtimes at import time:

- grpcio-tools >= 1.63 writes ``GRPC_GENERATED_VERSION`` into ``*_pb2_grpc.py`` (a warning in
  1.63-1.65, a RuntimeError from 1.66 on) and passes ``_registered_method=True`` to the
  channel, which older grpcio does not accept; 1.64+ also calls
  ``server.add_registered_method_handlers`` (grpcio >= 1.64 only);
- grpcio-tools >= 1.66 writes ``ValidateProtobufRuntimeVersion(5, 27, ...)`` into ``*_pb2.py``;
  the 1.85 code we had demanded protobuf >= 7.35.1 and grpcio >= 1.85.1, neither of which
  exists for Python 3.9.

1.62.3 is the newest release with none of that: its ``*_pb2.py`` needs only
``google.protobuf.internal.builder`` (protobuf >= 3.20) and its stubs only the grpcio API that
has been there for years. It imports and round-trips unchanged on protobuf 3.20 up to 7.x (upb,
cpp and pure-python implementations). Older releases down to 1.49.1 (the oldest with a cp311
wheel) produce code with exactly the same runtime needs, so going older buys nothing, while
they need ``pkg_resources`` and have no wheels for Python >= 3.12. docs/agent_compat.md lists
what was verified.

How it runs: grpcio-tools 1.62.3 pins ``protobuf<5``, which cannot share an environment with
the host's onnx (protobuf >= 6.31) and protobuf 7, so it is NOT a dependency of any extra.
Instead the first run does ``pip install --no-deps --only-binary=:all: --target CACHE
grpcio-tools==1.62.3`` (one wheel, PyPI access needed once) and every run calls its protoc in a
child interpreter started with ``-I -S`` and only CACHE on ``sys.path``, so whatever
grpc_tools/protobuf the current environment has never mixes in. protoc itself needs no
protobuf or grpcio Python package. CACHE is ``$EDGETUNE_CODEGEN_CACHE`` if set, else
``<user cache dir>/edgetune/grpcio-tools-1.62.3-<python tag>-<platform>``; once it exists,
``--check`` takes well under a second and needs no network.

Boards never run this.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent   # the .proto files and the committed code beside them
PROTOS = ("agent.proto", "onnx_subset.proto")
PACKAGE_PATH = "edgetune/protos"   # where the installed code lives, and the descriptors' file names
GENERATED = ("agent_pb2.py", "agent_pb2.pyi", "agent_pb2_grpc.py",
             "onnx_subset_pb2.py", "onnx_subset_pb2.pyi")

GRPCIO_TOOLS_VERSION = "1.62.3"
CACHE_ENV = "EDGETUNE_CODEGEN_CACHE"

# Runs in the child interpreter: argv[1] is the tools dir, the rest is protoc's command line
# with "{include}" standing for grpc_tools' bundled well-known protos.
_RUN_PROTOC = """\
import os, sys
sys.path.insert(0, sys.argv[1])
from grpc_tools import protoc
include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
sys.exit(protoc.main([a.replace("{include}", include) for a in sys.argv[2:]]))
"""


def _user_cache_dir() -> Path:
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = str(Path.home() / "Library" / "Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base)


def tools_dir() -> Path:
    """Where the pinned grpcio-tools lives (its wheel is specific to this Python and platform)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    tag = f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}".replace(os.sep, "_")
    return _user_cache_dir() / "edgetune" / f"grpcio-tools-{GRPCIO_TOOLS_VERSION}-{tag}"


def _installed(target: Path) -> bool:
    return (target / f"grpcio_tools-{GRPCIO_TOOLS_VERSION}.dist-info").is_dir() \
        and (target / "grpc_tools" / "protoc.py").is_file()


def ensure_tools(target: Path | None = None) -> Path:
    """Install the pinned grpcio-tools into ``target`` unless it is already there; return it.

    pip writes into a sibling temp dir that is renamed into place, so an interrupted or
    concurrent first run never leaves a half-installed cache behind.
    """
    target = target or tools_dir()
    if _installed(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--no-input", "--no-deps", "--only-binary=:all:", "--target", str(staging),
               f"grpcio-tools=={GRPCIO_TOOLS_VERSION}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not _installed(staging):
            raise SystemExit(
                f"could not install the pinned generator grpcio-tools=={GRPCIO_TOOLS_VERSION} "
                f"into {target} (it needs PyPI once, and a wheel for this Python):\n"
                f"{proc.stderr.strip()}\n"
                f"install it by hand with: {sys.executable} -m pip install --no-deps "
                f"--target {target} grpcio-tools=={GRPCIO_TOOLS_VERSION}\n"
                f"or point ${CACHE_ENV} at a directory that holds it")
        try:
            staging.rename(target)
        except OSError as exc:
            if not _installed(target):  # not a lost race with another run: a real failure
                raise SystemExit(f"could not move the pinned generator into {target} ({exc}); "
                                 "remove that directory and run again") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def generate(out_dir: Path) -> Path:
    """Run the pinned protoc for every proto; return the folder that holds the generated code.

    The .proto files are staged as ``edgetune/protos/NAME.proto`` under a private include root,
    so the generated code imports ``edgetune.protos...`` and registers its file in protobuf's
    global descriptor pool as ``edgetune/protos/NAME.proto`` (a name no other project's proto
    can take). The wire names (package ``edgetune.agent.v1``) come from the .proto alone.
    """
    tools = ensure_tools()
    root_dir = out_dir / "include"
    staged = root_dir / PACKAGE_PATH
    staged.mkdir(parents=True, exist_ok=True)
    for proto in PROTOS:
        shutil.copyfile(HERE / proto, staged / proto)
    for proto in PROTOS:
        args = ["protoc", f"-I{root_dir}", "-I{include}", f"--python_out={out_dir}",
                f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", f"{PACKAGE_PATH}/{proto}"]
        # -I: ignore PYTHON* variables, the cwd and user site; -S: no site-packages at all.
        proc = subprocess.run([sys.executable, "-I", "-S", "-c", _RUN_PROTOC, str(tools), *args],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"protoc (grpcio-tools {GRPCIO_TOOLS_VERSION} in {tools}) failed "
                             f"on {proto}:\n{proc.stderr.strip()}")
    return out_dir / PACKAGE_PATH


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgetune.protos.codegen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="compare instead of writing; exit 1 when the committed code is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        stale = []
        for name in GENERATED:
            fresh = (generated / name).read_bytes()
            committed = HERE / name
            if args.check:
                if not committed.exists() or committed.read_bytes() != fresh:
                    stale.append(name)
            else:
                committed.write_bytes(fresh)
    if stale:
        print(f"stale generated code: {', '.join(stale)}; run: python -m edgetune.protos.codegen",
              file=sys.stderr)
        return 1
    print("protos: generated code is up to date" if args.check else "protos: regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
