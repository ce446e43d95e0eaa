"""PKI files: where they live, reading them, and writing them whole or not at all.

Layout of a PKI directory: ``ca-cert.pem``/``ca-key.pem`` and ``NAME-cert.pem``/``NAME-key.pem``
per board or host. Keys are written 0600, certificates 0644, through a temp file in the same
directory that is renamed into place, so a crash never leaves half a key. Nothing is
overwritten unless ``force`` is given.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Iterable, List

from cryptography import x509

from edgetune.certs.errors import (CertFileError, CertFileExistsError, CertFileNotFoundError,
                          CertFormatError)

CA_NAME = "ca"
CERT_SUFFIX = "-cert.pem"
KEY_SUFFIX = "-key.pem"
KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700


def cert_path(directory: Path, name: str) -> Path:
    return Path(directory) / f"{name}{CERT_SUFFIX}"


def key_path(directory: Path, name: str) -> Path:
    return Path(directory) / f"{name}{KEY_SUFFIX}"


def ensure_dir(directory: Path) -> Path:
    """Create the PKI directory (0700) if needed."""
    directory = Path(directory)
    try:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise CertFileError(f"cannot create the PKI directory {directory}: {exc.strerror}") from None
    if not directory.is_dir():
        raise CertFileError(f"{directory} is not a directory")
    return directory


def refuse_existing(paths: Iterable[Path], force: bool) -> None:
    """Raise ``CertFileExistsError`` naming every path that exists, unless ``force``."""
    if force:
        return
    existing = [str(p) for p in paths if os.path.lexists(p)]
    if existing:
        raise CertFileExistsError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "pass --force to replace it, or pick another name or directory")


def write_atomic(path: Path, data: bytes, *, mode: int, force: bool = False) -> Path:
    """Write ``data`` to ``path`` with ``mode`` via a temp file + rename in the same directory."""
    path = Path(path)
    refuse_existing([path], force)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    except OSError as exc:
        raise CertFileError(f"cannot write in {path.parent}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if force:
            os.replace(tmp, path)
        else:
            _link_no_clobber(Path(tmp), path)
    except CertFileError:
        raise
    except OSError as exc:
        raise CertFileError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return path


def _link_no_clobber(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` failing if ``path`` appeared meanwhile (link is atomic)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        refuse_existing([path], force=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        refuse_existing([path], force=False)   # a filesystem without hard links (FAT)
        os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_file(path: Path, what: str = "file") -> bytes:
    """The bytes of ``path``; ``CertFileNotFoundError`` naming ``what`` when it is missing."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertFileNotFoundError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise CertFileError(f"{what} {path} is a directory, not a file") from None
    except OSError as exc:
        raise CertFileError(f"cannot read {what} {path}: {exc.strerror}") from None


def parse_certs_pem(pem: bytes, source: str = "the certificate") -> List[x509.Certificate]:
    """Every certificate in a PEM bundle; ``CertFormatError`` when there is none or it is bad."""
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        hint = ""
        if pem[:1] == b"\x30":
            hint = " (it looks like DER: convert with openssl x509 -inform der -in FILE -out FILE.pem)"
        elif b"PRIVATE KEY-----" in pem:
            hint = " (it holds a private key: did you swap the cert and key files?)"
        raise CertFormatError(f"{source} is not a PEM certificate{hint}")
    try:
        return list(x509.load_pem_x509_certificates(pem))
    except ValueError as exc:
        raise CertFormatError(f"{source} holds a damaged certificate: {exc}") from None


def parse_cert_pem(pem: bytes, source: str = "the certificate") -> x509.Certificate:
    """The first certificate of a PEM file."""
    return parse_certs_pem(pem, source)[0]
