"""Upload throughput: edgetune over mutual TLS vs a plain Python TLS socket vs paramiko SFTP.

    python bench/upload_throughput.py [--mib 256] [--repeat 5] [--no-sftp] [--json]

All ways send the same file over loopback in the same run, one after the other in each
round (the order rotates from round to round), and every receiver writes the bytes to a file
on the same disk:
- edgetune: AgentClient.upload to a local agent (mutual TLS, sha256 verified, content-addressed
  store), a fresh file each round so nothing is deduplicated. Timed from the call to its
  return: GetUploadStatus, the stream (a new large file is sent by upload id at once, with
  no sha256 pass on the client; the agent hashes as the bytes arrive) and the agent's
  commit (fsync, hash, header check of the dataset, rename);
- TLS socket: Python's ssl module, mutual TLS with the same certificates, the receiver (a
  thread of this process) writes each chunk to a file and fsyncs it at the end (no hashing,
  no framing: the cheapest honest transfer);
- TLS socket + sha256: the same, with the receiver also hashing what it receives, as the
  agent must to verify (or name) a content-addressed blob (issue 12's restated target:
  edgetune >= 0.85x of it);
- TLS socket + sha256 in a thread (for scale, no target): the receiver fills 1 MiB buffers,
  writes them and hashes them in a second thread (the agent's ``BackgroundHash``): the most a
  verifying receiver can get out of a plain socket, i.e. what a bulk-data side channel
  beside gRPC could reach at best;
- SFTP: paramiko's SFTPClient.put to OpenSSH's sshd on loopback (internal-sftp, no fsync);
  the connection and login are not timed.
Before each timed transfer the page cache is written back (``os.sync``, untimed), so that no
way pays in its fsyncs for the dirty pages another left (the source file is freshly written).
Prints MiB/s for each (median of the rounds), the CPU seconds both ends used (sender and
receiver share this machine's cores), and the ratios edgetune/TLS (target >= 0.6),
edgetune/(TLS + sha256) (target >= 0.85) and edgetune/SFTP (target >= 4). Exits 1 when a
target is missed. Over emulated links (a network namespace, tc, a CPU quota on the receiving
side): bench/upload_links.py.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (check, connect, finish, local_agent, log_progress,  # noqa: E402
                          cpu_seconds, machine, make_pki, median)

CHUNK = 1 << 20


def tls_socket_upload(src: Path, dst: Path, pki, hashing: str = "") -> tuple[float, float]:
    """(seconds, CPU seconds of both ends) to send src over a mutual-TLS socket into dst (the
    receiver writes to disk; ``hashing`` "inline": it also sha256-hashes each read, "thread":
    it fills 1 MiB buffers and hashes them in a second thread, as the agent does). Timed from
    the end of the client's handshake, as the edgetune upload is timed on a connected
    channel."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.device_cert, pki.device_key, password=pki.passphrase)
    server_ctx.load_verify_locations(pki.ca_cert)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_cert_chain(pki.host_cert, pki.host_key, password=pki.passphrase)
    client_ctx.load_verify_locations(pki.ca_cert)

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    size = src.stat().st_size

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls, open(dst, "wb") as out:
            if hashing == "thread":
                _receive_hashing_in_a_thread(tls, out, size)
            else:
                buf = bytearray(CHUNK)
                view = memoryview(buf)
                hasher = hashlib.sha256() if hashing == "inline" else None
                got = 0
                while got < size:
                    n = tls.recv_into(view)
                    if not n:
                        break
                    out.write(view[:n])
                    if hasher is not None:
                        hasher.update(view[:n])
                    got += n
            out.flush()
            os.fsync(out.fileno())
            tls.sendall(b"k")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls, open(src, "rb") as f:
        cpu0 = cpu_seconds()
        start = time.perf_counter()
        while chunk := f.read(CHUNK):
            tls.sendall(chunk)
        tls.recv(1)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds() - cpu0
    thread.join()
    listener.close()
    return elapsed, cpu


def _receive_hashing_in_a_thread(tls: ssl.SSLSocket, out, size: int) -> str:
    """Receive ``size`` bytes into fresh 1 MiB buffers, write each and hash it in a second
    thread (``edgetune.device.upload.BackgroundHash``, as the agent does); the hex digest."""
    from edgetune.device.upload import BackgroundHash

    background = BackgroundHash(hashlib.sha256())
    got = 0
    while got < size:
        view = memoryview(bytearray(min(CHUNK, size - got)))
        filled = 0
        while filled < len(view):
            n = tls.recv_into(view[filled:])
            if not n:
                raise ConnectionError(f"the sender stopped after {got + filled} of {size} bytes")
            filled += n
        out.write(view)
        background.update(view)         # a fresh buffer each time: never changed after this
        got += filled
    return background.hexdigest()


def sftp_upload(src: Path, dst: Path) -> float:
    from bench.sshd import local_sshd

    with local_sshd() as server:
        return sftp_put(server, src, dst)


def sftp_put(server, src: Path, dst: Path) -> float:
    """Seconds of paramiko's ``SFTPClient.put`` of src to ``server`` (a ``bench.sshd.SshServer``);
    the connection and login are not timed."""
    import paramiko

    client = paramiko.SSHClient()
    client.get_host_keys().add(f"[{server.host}]:{server.port}", "ssh-ed25519",
                               _host_key(server.host_key_pub))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(server.host, port=server.port, username=server.user,
                   key_filename=str(server.client_key), look_for_keys=False,
                   allow_agent=False, timeout=10)
    try:
        sftp = client.open_sftp()
        start = time.perf_counter()
        sftp.put(str(src), str(dst))
        elapsed = time.perf_counter() - start
        sftp.close()
    finally:
        client.close()
    return elapsed


def _host_key(pub: Path):
    import base64

    import paramiko

    kind, blob = pub.read_text().split()[:2]
    assert kind == "ssh-ed25519"
    return paramiko.Ed25519Key(data=base64.b64decode(blob))


def edgetune_upload(src: Path, pki, agent_address: str, agent_pid: int,
                    cpu: dict[str, list[float]]) -> float:
    from edgetune.protos.messages import BlobKind

    with connect(agent_address, pki) as client:
        cpu0, agent0 = cpu_seconds(), cpu_seconds(agent_pid)
        start = time.perf_counter()
        outcome = client.upload(src, BlobKind.DATASET)
        elapsed = time.perf_counter() - start
        cpu["edgetune"].append(cpu_seconds() - cpu0 + cpu_seconds(agent_pid) - agent0)
        assert outcome.sent_bytes == src.stat().st_size, outcome
    return elapsed


def make_blob(path: Path, mib: int, salt: int) -> None:
    """A valid dataset .npz of about `mib` MiB (random bytes: no compression wins)."""
    import numpy as np

    rng = np.random.default_rng(salt)
    arr = rng.integers(0, 255, size=(mib, 1 << 20), dtype=np.uint8)
    np.savez(path, input=arr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="size of the file (default 256)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="rounds; each sends a fresh file by every way (default 5)")
    parser.add_argument("--no-sftp", action="store_true",
                        help="skip the SFTP baseline (no sshd here); its target is then "
                             "not checked")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.mib < 1 or args.repeat < 1:
        parser.error("--mib and --repeat must be at least 1")

    ways = (["edgetune", "tls_socket", "tls_socket_sha256", "tls_socket_sha256_thread"]
            + ([] if args.no_sftp else ["sftp"]))
    times: dict[str, list[float]] = {k: [] for k in ways}
    hash_s: list[float] = []
    cpu: dict[str, list[float]] = {k: [] for k in ways if k != "sftp"}   # both ends, CPU s
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp:
        d = Path(tmp)
        os.environ["EDGETUNE_HASH_CACHE"] = str(d / "hashes.json")   # not the user's cache
        pki = make_pki(d / "pki")
        limits = {"max_dataset_mb": max(2048, 2 * args.mib + 64)}   # room for big --mib
        with local_agent(pki, d / "store", limits=limits) as agent:
            for i in range(args.repeat):
                src = d / f"blob{i}.npz"
                make_blob(src, args.mib, salt=i)
                size = src.stat().st_size
                log_progress(args.json, f"round {i + 1}/{args.repeat}: {size / (1 << 20):.1f} MiB")
                hash_s.append(_time_hash(src))
                for way in ways[i % len(ways):] + ways[:i % len(ways)]:
                    _settle()
                    if way == "edgetune":
                        times[way].append(edgetune_upload(src, pki, agent.address,
                                                          agent.process.pid, cpu))
                    elif way == "sftp":
                        times[way].append(sftp_upload(src, d / "sftp.out"))
                    else:
                        elapsed, cpu_s = tls_socket_upload(src, d / "tls.out", pki,
                                                           hashing=_HASHING[way])
                        times[way].append(elapsed)
                        cpu[way].append(cpu_s)
                        (d / "tls.out").unlink()
                log_progress(args.json, "  " + ", ".join(
                    f"{k} {size / (1 << 20) / v[-1]:.0f} MiB/s" for k, v in times.items()))
                for f in (d / "tls.out", d / "sftp.out", src):
                    f.unlink(missing_ok=True)
                _drop_stored(agent.address, pki)
    mib = size / (1 << 20)
    rates = {k: mib / median(v) for k, v in times.items()}
    checks = [check("edgetune / TLS socket", rates["edgetune"] / rates["tls_socket"], ">=", 0.6),
              # issue 12's restated loopback target: against a receiver that hashes, as the
              # agent must (it names and verifies what it stores by sha256)
              check("edgetune / TLS socket + sha256",
                    rates["edgetune"] / rates["tls_socket_sha256"], ">=", 0.85)]
    if "sftp" in rates:
        checks.append(check("edgetune / SFTP", rates["edgetune"] / rates["sftp"], ">=", 4))
    result = {
        "benchmark": "upload_throughput", "size_mib": round(mib, 1), "repeat": args.repeat,
        "mib_per_s": {k: round(v, 1) for k, v in rates.items()},
        "seconds_per_round": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "sha256_pass_s_per_round": [round(t, 3) for t in hash_s],
        "cpu_s_per_round_both_ends": {k: [round(t, 3) for t in v] for k, v in cpu.items()},
        "ratio_vs_tls_socket": round(rates["edgetune"] / rates["tls_socket"], 3),
        "ratio_vs_tls_socket_sha256": round(rates["edgetune"] / rates["tls_socket_sha256"], 3),
        "ratio_vs_tls_socket_sha256_thread": round(
            rates["edgetune"] / rates["tls_socket_sha256_thread"], 3),
        "ratio_vs_sftp": round(rates["edgetune"] / rates["sftp"], 3) if "sftp" in rates else None,
        "checks": checks, "machine": machine(),
    }
    lines = [f"upload of {result['size_mib']} MiB over loopback, median of {args.repeat} rounds:"]
    lines += [f"  {k:<24} {v:8.1f} MiB/s   rounds (s): {result['seconds_per_round'][k]}"
              for k, v in result["mib_per_s"].items()]
    lines.append(f"  (for scale: one sha256 pass over the file takes {median(hash_s):.2f} s here; "
                 "a new large file streams at once and the agent hashes it as it arrives)")
    lines.append("  CPU seconds, both ends: " + ", ".join(
        f"{k} {median(v):.2f}" for k, v in cpu.items())
        + f" (sender and receiver share {os.cpu_count()} cores here)")
    lines.append(f"  edgetune / (TLS socket + sha256) = "
                 f"{result['ratio_vs_tls_socket_sha256']:.2f}; what a receiver that verifies "
                 f"by sha256 gets of the plain socket here: inline "
                 f"{rates['tls_socket_sha256'] / rates['tls_socket']:.2f}, in a thread "
                 f"{rates['tls_socket_sha256_thread'] / rates['tls_socket']:.2f}")
    if "sftp" in rates:
        lines.append(f"  for scale: TLS socket / SFTP = {rates['tls_socket'] / rates['sftp']:.2f}")
    return finish(result, args.json, lines)


_HASHING = {"tls_socket": "", "tls_socket_sha256": "inline", "tls_socket_sha256_thread": "thread"}


def _settle() -> None:
    """Untimed: write back every dirty page (the new source file, the previous receiver's
    output) so that no way pays for another's disk writes in its own fsyncs."""
    os.sync()
    time.sleep(0.2)


def _time_hash(path: Path) -> float:
    """Seconds of one sha256 pass over the file, for scale: about what the agent's hashing of
    an upload costs (a large new file is not hashed by the client first)."""
    from edgetune.host.client import file_sha256

    start = time.perf_counter()
    file_sha256(path)
    return time.perf_counter() - start


def _drop_stored(address: str, pki) -> None:
    """Delete the uploaded datasets so the store does not grow round after round (untimed)."""
    from edgetune.protos.messages import BlobKind

    with connect(address, pki) as client:
        for blob in client.list_blobs(BlobKind.DATASET):
            client.delete_blob(BlobKind.DATASET, blob.sha256)


if __name__ == "__main__":
    sys.exit(main())
