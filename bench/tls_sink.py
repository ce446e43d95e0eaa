"""A mutual-TLS receiver in a process of its own: the baseline the agent's upload is measured
against over an emulated link (``bench/upload_links.py`` starts it in the board's namespace,
under the board's CPU quota, as it starts the agent).

    python bench/tls_sink.py --listen IP:0 --ready FILE --ca CA --cert CERT --key KEY \\
        --passphrase-file FILE --dir DIR

Serves one connection after the other until killed. Each connection sends a mode byte (``p``:
plain, ``h``: sha256-hash what arrives, as the agent must) and the size (8 bytes, big endian),
then the bytes; the sink writes them to a file in DIR, fsyncs it, answers ``k`` and the sha256
(32 zero bytes when plain), and deletes the file. Python's ssl module, as in
bench/upload_throughput.py; 1 MiB reads.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import ssl
import struct
import sys
from pathlib import Path
from typing import Optional, Tuple

CHUNK = 1 << 20
HEADER = struct.Struct(">cQ")


def _split(address: str) -> Tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def receive_one(tls: ssl.SSLSocket, out_dir: Path) -> None:
    header = b""
    while len(header) < HEADER.size:
        more = tls.recv(HEADER.size - len(header))
        if not more:
            return
        header += more
    mode, size = HEADER.unpack(header)
    hasher: Optional["hashlib._Hash"] = hashlib.sha256() if mode == b"h" else None
    path = out_dir / "sink.out"
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    got = 0
    with open(path, "wb") as out:
        while got < size:
            n = tls.recv_into(view, min(CHUNK, size - got))
            if not n:
                raise ConnectionError(f"the sender stopped after {got} of {size} bytes")
            out.write(view[:n])
            if hasher is not None:
                hasher.update(view[:n])
            got += n
        out.flush()
        os.fsync(out.fileno())
    path.unlink()
    tls.sendall(b"k" + (hasher.digest() if hasher is not None else bytes(32)))


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag in ("--listen", "--ready", "--ca", "--cert", "--key", "--passphrase-file", "--dir"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args(argv)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key,
                            password=Path(args.passphrase_file).read_bytes().strip())
    context.load_verify_locations(args.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    host, port = _split(args.listen)
    listener = socket.create_server((host, port))
    bound = listener.getsockname()
    Path(args.ready).write_text(f"{bound[0]}:{bound[1]}\n")
    out_dir = Path(args.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    while True:
        conn, _ = listener.accept()
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                receive_one(tls, out_dir)
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            print(f"tls_sink: {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
