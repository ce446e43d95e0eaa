"""What a board is, asked in one SSH round trip (``boardctl probe``): architecture, OS and libc,
Python and venv support, free disk, an existing edgetune install, systemd and whether deploy
may use it (root or passwordless sudo), and the onnxruntime its own Python imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from edgetune.host.deploy.ssh import MissingProgram, SshSession
from edgetune.host.errors import BadInputError

MIN_PYTHON = (3, 9)
MIN_FREE_BYTES = 400 << 20      # a venv with onnxruntime, numpy and grpcio, plus the wheels


@dataclass(frozen=True)
class BoardOnnxruntime:
    version: str
    providers: Tuple[str, ...]
    path: str


@dataclass(frozen=True)
class BoardFacts:
    arch: str
    os_name: str                    # PRETTY_NAME of os-release
    libc: str                       # "glibc", "musl" or "" when unknown
    libc_version: str
    python: str                     # "3.9.2"
    python_executable: str
    venv: bool
    free_bytes: Optional[int]
    user: str
    home: str
    root: bool
    sudo: bool
    systemd: bool
    useradd: bool
    prefix: str                     # the install prefix, ~ expanded on the board
    state: Optional[Dict[str, Any]]  # deploy.json of an existing install
    ca_pem: Optional[str]
    cert_pem: Optional[str]
    onnxruntime: Optional[BoardOnnxruntime]
    service_active: bool

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "BoardFacts":
        ort = doc.get("onnxruntime")
        libc = str(doc.get("libc") or "")
        return cls(
            arch=str(doc["arch"]), os_name=str(doc.get("os", {}).get("PRETTY_NAME") or doc.get("system")),
            libc="glibc" if libc == "glibc" else libc, libc_version=str(doc.get("libc_version") or ""),
            python=str(doc["python"]), python_executable=str(doc["python_executable"]),
            venv=bool(doc["venv"]), free_bytes=doc.get("free_bytes"), user=str(doc["user"]),
            home=str(doc["home"]), root=bool(doc["root"]), sudo=bool(doc["sudo"]),
            systemd=bool(doc["systemd"]), useradd=bool(doc.get("useradd")),
            prefix=str(doc["prefix"]), state=doc.get("state"), ca_pem=doc.get("ca_pem"),
            cert_pem=doc.get("cert_pem"),
            onnxruntime=BoardOnnxruntime(str(ort["version"]), tuple(ort.get("providers") or ()),
                                         str(ort.get("path") or "")) if ort else None,
            service_active=bool(doc.get("service_active")))

    @property
    def python_tuple(self) -> Tuple[int, int]:
        major, minor = self.python.split(".")[:2]
        return int(major), int(minor)

    @property
    def systemd_usable(self) -> bool:
        return self.systemd and (self.root or self.sudo)

    @property
    def python_tag(self) -> str:
        return "cp%d%d" % self.python_tuple

    def platform_tags(self) -> List[str]:
        """The wheel platform tags this board's pip accepts, most specific first."""
        arch = {"arm64": "aarch64", "amd64": "x86_64"}.get(self.arch, self.arch)
        major, minor = _version_pair(self.libc_version)
        tags: List[str] = []
        if self.libc == "glibc" and major == 2:
            # PyPI's Linux wheels: manylinux_2_17 (manylinux2014) and newer; older tags only
            # on x86 (manylinux2010 = 2_12, manylinux1 = 2_5)
            floor = 5 if arch in ("x86_64", "i686") else 17
            for glibc_minor in range(minor, floor - 1, -1):
                tags.append(f"manylinux_2_{glibc_minor}_{arch}")
                legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}.get(glibc_minor)
                if legacy:
                    tags.append(f"{legacy}_{arch}")
        elif self.libc == "musl" or not self.libc:
            if major == 1:
                for musl_minor in range(minor, 0, -1):
                    tags.append(f"musllinux_1_{musl_minor}_{arch}")
        tags.append(f"linux_{arch}")
        return tags

    @property
    def platform_label(self) -> str:
        """How a message names this board's platform: manylinux_2_31_aarch64 / cp39."""
        return f"{self.platform_tags()[0]} / {self.python_tag}"

    def describe(self) -> Dict[str, Any]:
        return {"arch": self.arch, "os": self.os_name, "libc": f"{self.libc} {self.libc_version}".strip(),
                "python": self.python, "venv": self.venv, "free_mb": None if self.free_bytes is None
                else self.free_bytes >> 20, "user": self.user, "root": self.root,
                "sudo": self.sudo, "systemd": self.systemd, "systemd_usable": self.systemd_usable,
                "installed": (self.state or {}).get("version"),
                "board_onnxruntime": None if self.onnxruntime is None else {
                    "version": self.onnxruntime.version,
                    "providers": list(self.onnxruntime.providers)}}


def _version_pair(text: str) -> Tuple[int, int]:
    parts = text.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        return 0, 0


def probe(session: SshSession, prefix: str, python: str = "python3", *,
          ask_onnxruntime: bool = True) -> BoardFacts:
    """Ask the board; BadInputError when it cannot run the agent (the message says why).
    ``ask_onnxruntime``: whether to find out which onnxruntime the board's Python imports
    (a child process importing it: skipped when --onnxruntime pypi makes it moot)."""
    args = [prefix] + ([] if ask_onnxruntime else ["skip-ort"])
    try:
        doc = session.boardctl("probe", *args, python=python, require=True)
    except MissingProgram:
        raise BadInputError(f"{session.settings.label} has no {python}",
                            hint="install Python 3.9 or newer with venv there (Debian: apt-get "
                                 "install python3 python3-venv), or name it with --python"
                            ) from None
    facts = BoardFacts.from_json(doc)
    where = session.settings.label
    if facts.python_tuple < MIN_PYTHON:
        raise BadInputError(f"{where} runs Python {facts.python}; the agent needs 3.9 or newer",
                            hint="install a newer python3 on the board (and python3-venv)")
    if not facts.venv:
        raise BadInputError(f"{where}: python3 {facts.python} cannot make a venv (the venv or "
                            "ensurepip module is missing)",
                            hint="install it on the board: apt-get install python3-venv "
                                 "(Debian/Ubuntu), or your image's equivalent")
    return facts


def check_disk(facts: BoardFacts, where: str, needed: int = MIN_FREE_BYTES) -> None:
    if facts.free_bytes is not None and facts.free_bytes < needed:
        raise BadInputError(f"{where} has {facts.free_bytes >> 20} MiB free under {facts.prefix}; "
                            f"the install needs about {needed >> 20} MiB",
                            hint="free some space or pick another --prefix")
