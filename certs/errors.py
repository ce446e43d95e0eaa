"""The PKI's exception hierarchy.

Every message names the file or value at fault and what to do about it. Each class carries
its exit code (``exit_status``, from ``edgetune.exitcodes``): the one place that decides how
both ``edgetune`` and ``edgetune-agent`` exit on a certificate, key or passphrase problem.
"""

from __future__ import annotations

from edgetune.exitcodes import ExitStatus

PASSPHRASE_HINT = "set EDGETUNE_PASSPHRASE or --passphrase-file"


class CertError(Exception):
    """Base of every error raised by ``certs``."""

    exit_status: ExitStatus = ExitStatus.AUTH


class PassphraseError(CertError):
    """A passphrase did not decrypt a key (wrong passphrase, or none given for an encrypted key)."""


class PassphrasePolicyError(CertError):
    """A passphrase cannot be used: too short, the two entries differ, or no source is available."""

    exit_status = ExitStatus.USAGE


class CertOptionError(CertError):
    """A bad argument: a name that is not a plain name, an unknown key type, a bad IP or subject."""

    exit_status = ExitStatus.USAGE


class CertFileError(CertError):
    """A certificate or key file cannot be used."""

    exit_status = ExitStatus.BAD_INPUT


class CertFileNotFoundError(CertFileError):
    """A certificate, key or passphrase file does not exist."""

    exit_status = ExitStatus.NOT_FOUND


class CertFileExistsError(CertFileError):
    """Refusing to overwrite an existing file without ``force``."""

    exit_status = ExitStatus.USAGE


class CertFormatError(CertFileError):
    """A file is not the PEM certificate or key it should be."""


class KeyMismatchError(CertError):
    """A private key does not belong to the certificate it was paired with."""


class CertVerifyError(CertError):
    """A certificate is not signed by the CA, is out of date, or has the wrong usage."""
