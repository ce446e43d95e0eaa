"""``python -m tests.emulated build [--arch arm64|riscv64|all] [--prepare-host]``: make or
refresh the cached boards (each one's root file system and the agent's dependency layer) and
print how long each part took. The default builds both: the Debian 11 arm64 board and the
Debian 13 riscv64 board with the distribution's onnxruntime."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import List, Optional

from tests.emulated import rootfs


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.emulated")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the cached boards when missing or stale")
    build.add_argument("--arch", choices=(*rootfs.RECIPES, "all"), default="all",
                       help="which board (Debian's architecture name); default: all")
    build.add_argument("--prepare-host", action="store_true",
                       help="apt-get install qemu-user-static, binfmt-support, debootstrap, "
                            "iproute2 when missing and enable binfmt (root)")
    build.add_argument("--rootfs-only", action="store_true",
                       help="only the root file system, not the agent's dependency layer")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    recipes = list(rootfs.RECIPES.values()) if args.arch == "all" else [rootfs.RECIPES[args.arch]]
    for recipe in recipes:
        if args.prepare_host:
            rootfs.prepare_host(recipe)
        began = time.monotonic()
        entry = rootfs.ensure_built(recipe)
        print(f"{recipe.name} root file system: {entry.name} ({time.monotonic() - began:.0f} s)",
              flush=True)
        if not args.rootfs_only:
            from tests.emulated import layers
            began = time.monotonic()
            layer = layers.ensure_agent_layer(recipe)
            print(f"{recipe.name} agent dependency layer: {layer.parent.name} "
                  f"({time.monotonic() - began:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
