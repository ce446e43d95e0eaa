"""Signed result records: the canonical encoding, signing with a TLS key, and the checks.

The agent signs what it measured with its own TLS private key; anyone holding the CA
certificate can check it later (``edgetune results verify``, or openssl: docs/results.md).

The signed bytes (``encode_payload``) are ``DOMAIN`` (``b"edgetune-result-v1\\n"``) followed by
the canonical JSON of a document (``canonical_json``):

- UTF-8, ASCII only (anything else escaped as ``\\uXXXX``), keys sorted, no whitespace
  (separators ``,`` and ``:``);
- integers as integers; floats as Python's ``repr`` (the shortest decimal that reads back as
  the same IEEE-754 double, e.g. ``0.1``, ``1e-05``, ``2.0``); NaN and the infinities as the
  strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; tuples as arrays.

Algorithms (``ALGORITHMS``): ``ecdsa-p256-sha256`` (ECDSA over P-256 with SHA-256, the
signature DER-encoded) and ``rsa-pss-sha256`` (RSASSA-PSS, SHA-256, MGF1-SHA256, salt length
32). Which one follows from the key the board has.

Board-side code (Python 3.9, ``cryptography`` only).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from typing import Any, List, Optional, Sequence, Tuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from edgetune.certs.keys import PrivateKey

DOMAIN = b"edgetune-result-v1\n"
ECDSA_P256_SHA256 = "ecdsa-p256-sha256"
RSA_PSS_SHA256 = "rsa-pss-sha256"
ALGORITHMS = (ECDSA_P256_SHA256, RSA_PSS_SHA256)
PSS_SALT_LENGTH = 32


class SignatureError(ValueError):
    """A signature, its certificate or its payload does not check out; the message says what."""


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def canonical_json(doc: Any) -> bytes:
    """The canonical JSON bytes of ``doc`` (see the module's docstring)."""
    return json.dumps(_plain(doc), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def encode_payload(doc: Any) -> bytes:
    """The bytes the agent signs: ``DOMAIN`` + ``canonical_json(doc)``."""
    return DOMAIN + canonical_json(doc)


def decode_payload(payload: bytes) -> Any:
    """The document of signed bytes; SignatureError when they are not in this format."""
    if not payload.startswith(DOMAIN):
        raise SignatureError("the signed payload does not start with "
                             f"{DOMAIN.decode().strip()!r} (not an edgetune result signature)")
    body = payload[len(DOMAIN):]
    try:
        doc = json.loads(body.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SignatureError(f"the signed payload is not canonical JSON: {exc}") from None
    if canonical_json(doc) != body:
        raise SignatureError("the signed payload is not in canonical form")
    return doc


def samples_digest(samples: Sequence[float]) -> str:
    """sha256 (hex) of the canonical JSON array of latency samples: how a signature covers
    the raw samples without carrying them twice."""
    return hashlib.sha256(canonical_json(list(samples))).hexdigest()


def algorithm_for(key: Any) -> str:
    """The signature algorithm of a private or public key; SignatureError for other keys."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return RSA_PSS_SHA256
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if key.curve.name == "secp256r1":
            return ECDSA_P256_SHA256
        raise SignatureError(f"ECDSA keys on {key.curve.name} are not used for signatures; "
                             "edgetune signs with P-256")
    raise SignatureError(f"a {type(key).__name__} cannot sign results (RSA or ECDSA P-256)")


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LENGTH)


def sign(key: PrivateKey, payload: bytes) -> Tuple[bytes, str]:
    """(signature, algorithm) of ``payload`` with ``key``."""
    algorithm = algorithm_for(key)
    if algorithm == RSA_PSS_SHA256:
        assert isinstance(key, rsa.RSAPrivateKey)
        return key.sign(payload, _pss(), hashes.SHA256()), algorithm
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key.sign(payload, ec.ECDSA(hashes.SHA256())), algorithm


def check_signature(cert: x509.Certificate, payload: bytes, signature: bytes,
                    algorithm: str) -> None:
    """SignatureError unless ``signature`` over ``payload`` verifies with ``cert``'s key under
    ``algorithm`` (which must be the one for that key)."""
    public = cert.public_key()
    if algorithm not in ALGORITHMS:
        raise SignatureError(f"unknown signature algorithm {algorithm!r} (known: "
                             f"{', '.join(ALGORITHMS)})")
    expected = algorithm_for(public)
    if algorithm != expected:
        raise SignatureError(f"the signature claims {algorithm} but the agent certificate's key "
                             f"signs with {expected}")
    try:
        if algorithm == RSA_PSS_SHA256:
            public.verify(signature, payload, _pss(), hashes.SHA256())  # type: ignore[union-attr]
        else:
            public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))  # type: ignore[union-attr]
    except InvalidSignature:
        raise SignatureError("the signature does not match the signed payload (the payload "
                             "or the signature was changed, or another key signed it)") from None


def cert_sha256(cert: x509.Certificate) -> str:
    """sha256 (hex, lowercase) of the certificate's DER: how a payload names its signer."""
    return cert.fingerprint(hashes.SHA256()).hex()


def load_cert(pem: Any) -> x509.Certificate:
    data = pem.encode("ascii") if isinstance(pem, str) else bytes(pem)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise SignatureError(f"the agent certificate is not a PEM certificate: {exc}") from None


def check_agent_cert(cert: x509.Certificate, cas: Sequence[x509.Certificate], *,
                     at: Optional[dt.datetime] = None) -> x509.Certificate:
    """The CA of ``cas`` that issued ``cert``, once ``cert`` passes as an agent's signing
    certificate: signed by that CA (which is a CA), not a CA itself, with the serverAuth
    usage (a device certificate) and, when it has a keyUsage, digitalSignature; valid at
    ``at`` (the time it signed), when given. SignatureError naming what is wrong."""
    from edgetune.certs.describe import describe_certificate, has_server_auth
    from edgetune.certs.identity import issued_by

    issuer = next((ca for ca in cas if issued_by(cert, ca)), None)
    info = describe_certificate(cert)
    if issuer is None:
        raise SignatureError(f"the agent certificate {info.subject} (issuer {info.issuer}) is "
                             "not signed by the CA given; verify with the CA of the PKI that "
                             "issued the board's certificate (--ca)")
    if not describe_certificate(issuer).is_ca:
        raise SignatureError(f"the issuer {info.issuer} of the agent certificate is not a CA")
    if info.is_ca:
        raise SignatureError(f"the agent certificate {info.subject} is a CA certificate, not a "
                             "board's")
    if not has_server_auth(cert):
        raise SignatureError(f"the agent certificate {info.subject} lacks the serverAuth usage "
                             "(not a device certificate)")
    if info.key_usage and "digitalSignature" not in info.key_usage:
        raise SignatureError(f"the agent certificate {info.subject} lacks the digitalSignature "
                             "key usage")
    if at is not None and not info.not_before <= at <= info.not_after:
        raise SignatureError(f"the agent certificate {info.subject} was not valid when the "
                             f"result was signed ({at.isoformat()}; valid "
                             f"{info.not_before.isoformat()} to {info.not_after.isoformat()})")
    return issuer


def load_cas(pem: bytes, source: str) -> List[x509.Certificate]:
    """Every certificate of a CA bundle (``CertFormatError`` when there is none)."""
    from edgetune.certs.files import parse_certs_pem
    return list(parse_certs_pem(pem, source))


def public_pem(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


__all__ = ["ALGORITHMS", "DOMAIN", "ECDSA_P256_SHA256", "RSA_PSS_SHA256", "SignatureError",
           "algorithm_for", "canonical_json", "cert_sha256", "check_agent_cert",
           "check_signature", "decode_payload", "encode_payload", "load_cas", "load_cert",
           "public_pem", "samples_digest", "sign"]
