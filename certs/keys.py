"""Private keys: generate, encrypt to PEM, decrypt from PEM (ours and openssl's).

Keys are written as PKCS#8 ``ENCRYPTED PRIVATE KEY`` with PBES2 (PBKDF2-HMAC-SHA256 and
AES-256-CBC or AES-128-CBC), which ``openssl pkey``/``openssl rsa`` read without options.
``cryptography`` offers only AES-256 for PKCS#8, so the small PBES2 envelope is built here.
Loading accepts that form, openssl's traditional ``Proc-Type: 4,ENCRYPTED`` form and
unencrypted keys (with a warning). Decrypted keys exist only in memory.
"""

from __future__ import annotations

import base64
import logging
import os
from typing import Optional, Union

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from edgetune.certs.errors import (PASSPHRASE_HINT, CertFormatError, CertOptionError,
                          PassphraseError)

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]

KEY_TYPES = ("rsa3072", "rsa4096", "ecdsa-p256")
DEFAULT_KEY_TYPE = "rsa3072"
CIPHERS = ("aes256", "aes128")
DEFAULT_CIPHER = "aes256"
# PBKDF2 rounds for written keys. Decrypting costs this once per agent start or host command
# (~0.1 s on a PC, around a second on a slow board's CPU).
KDF_ROUNDS = 200_000

log = logging.getLogger(__name__)

_OID_PBES2 = "1.2.840.113549.1.5.13"
_OID_PBKDF2 = "1.2.840.113549.1.5.12"
_OID_HMAC_SHA256 = "1.2.840.113549.2.9"
_CIPHER_OIDS = {"aes128": ("2.16.840.1.101.3.4.1.2", 16), "aes256": ("2.16.840.1.101.3.4.1.42", 32)}


def generate_key(key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    """A new private key of one of ``KEY_TYPES``."""
    if key_type == "rsa3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if key_type == "rsa4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise CertOptionError(f"unknown key type {key_type!r}; use one of {', '.join(KEY_TYPES)}")


def key_type_name(public_key: object) -> str:
    """``rsa3072``, ``ecdsa-p256``, ... for a public key (also for sizes we do not generate)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa{public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ecdsa-p256" if public_key.curve.name == "secp256r1" else f"ecdsa-{public_key.curve.name}"
    return type(public_key).__name__


def public_key_der(key: object) -> bytes:
    """SubjectPublicKeyInfo DER of a private or public key (to compare key and certificate)."""
    public = key.public_key() if hasattr(key, "private_bytes") else key
    return public.public_bytes(serialization.Encoding.DER,  # type: ignore[union-attr]
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def plain_pkcs8_pem(key: PrivateKey) -> bytes:
    """The unencrypted PKCS#8 PEM that grpc takes. Keep it in memory only."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def encrypt_key_pem(key: PrivateKey, passphrase: bytes, cipher: str = DEFAULT_CIPHER,
                    *, rounds: int = KDF_ROUNDS) -> bytes:
    """``key`` as an ``ENCRYPTED PRIVATE KEY`` PEM (PKCS#8, PBES2, PBKDF2-HMAC-SHA256)."""
    if cipher not in _CIPHER_OIDS:
        raise CertOptionError(f"unknown cipher {cipher!r}; use one of {', '.join(CIPHERS)}")
    if not passphrase:
        raise PassphraseError("refusing to write a private key without a passphrase")
    cipher_oid, key_len = _CIPHER_OIDS[cipher]
    salt, iv = os.urandom(16), os.urandom(16)
    secret = PBKDF2HMAC(algorithm=hashes.SHA256(), length=key_len, salt=salt,
                        iterations=rounds).derive(passphrase)
    plain = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(secret), modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(padded) + encryptor.finalize()
    algorithm = _seq(_oid(_OID_PBES2), _seq(
        _seq(_oid(_OID_PBKDF2), _seq(_tlv(0x04, salt), _int(rounds),
                                     _seq(_oid(_OID_HMAC_SHA256), b"\x05\x00"))),
        _seq(_oid(cipher_oid), _tlv(0x04, iv))))
    der = _seq(algorithm, _tlv(0x04, encrypted))
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return (b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n" + b"\n".join(lines)
            + b"\n-----END ENCRYPTED PRIVATE KEY-----\n")


def is_encrypted_pem(pem: bytes) -> bool:
    """Whether a key PEM needs a passphrase (PKCS#8 encrypted or openssl's Proc-Type form)."""
    return b"BEGIN ENCRYPTED PRIVATE KEY" in pem or b"Proc-Type: 4,ENCRYPTED" in pem


def load_key_pem(pem: bytes, passphrase: Optional[bytes], *, source: str = "the key") -> PrivateKey:
    """Decrypt a key PEM. ``source`` (usually the path) names the key in error messages."""
    if b"-----BEGIN" not in pem or b"PRIVATE KEY-----" not in pem:
        raise CertFormatError(f"{source} is not a PEM private key (no '-----BEGIN ... PRIVATE KEY-----' line)")
    encrypted = is_encrypted_pem(pem)
    if encrypted and not passphrase:
        raise PassphraseError(f"{source} is encrypted and no passphrase was given ({PASSPHRASE_HINT})")
    if not encrypted:
        log.warning("%s is not encrypted; re-issue it with `edgetune certs issue` to protect it", source)
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase if encrypted else None)
    except ValueError as exc:
        if encrypted:
            raise PassphraseError(f"wrong passphrase for {source} ({PASSPHRASE_HINT})") from None
        raise CertFormatError(f"{source} is not a valid private key: {exc}") from None
    except (TypeError, UnsupportedAlgorithm) as exc:
        raise CertFormatError(f"{source} cannot be loaded: {exc}") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise CertFormatError(f"{source} is a {type(key).__name__}; edgetune uses RSA or ECDSA keys")
    return key


# --- the few DER encoders the PBES2 envelope needs --------------------------------------------

def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _int(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        body.extend(reversed(chunk))
    return _tlv(0x06, bytes(body))
