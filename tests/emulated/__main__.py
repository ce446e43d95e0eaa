"""``python -m tests.emulated build [--prepare-host]``: make or refresh the cached board (the
root file system and the agent's dependency layer) and print how long each part took."""

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
    build = sub.add_parser("build", help="build the cached board when missing or stale")
    build.add_argument("--prepare-host", action="store_true",
                       help="apt-get install qemu-user-static, binfmt-support, debootstrap, "
                            "iproute2 when missing and enable binfmt (root)")
    build.add_argument("--rootfs-only", action="store_true",
                       help="only the root file system, not the agent's dependency layer")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    recipe = rootfs.DEBIAN11_ARM64
    if args.prepare_host:
        rootfs.prepare_host(recipe)
    began = time.monotonic()
    entry = rootfs.ensure_built(recipe)
    print(f"root file system: {entry} ({time.monotonic() - began:.0f} s)")
    if not args.rootfs_only:
        from tests.emulated import layers
        began = time.monotonic()
        layer = layers.ensure_agent_layer(recipe)
        print(f"agent dependency layer: {layer} ({time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
