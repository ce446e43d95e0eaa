"""The helper deploy runs on a board: ``python3 - COMMAND ARGS... < boardctl.py``.

It is sent over SSH on stdin every time (nothing of it stays on the board), runs on the board's
own Python (3.9 or newer, standard library only, no edgetune import) and prints one JSON
document on stdout. Commands:

    probe PREFIX [skip-ort]      what the board is (arch, OS, libc, Python, venv, disk, systemd,
                                 root/sudo, its onnxruntime, an existing install under PREFIX)
    sha256 FILE...               {"FILE": [size, sha256 | null]} (null: missing); ``FILE.part``
                                 files report the hash of what is there, for a resumed upload
    start PREFIX USER            start the agent detached (own session, pid file, log file)
    stop PREFIX                  stop a detached agent (TERM, then KILL after 10 s)
    alive PREFIX                 whether the detached agent's pid is alive
    tail FILE N                  the last N lines of FILE
"""

import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time

STATE = "deploy.json"
CHUNK = 1 << 20


def _read(path, limit=1 << 16):
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def _os_release():
    fields = {}
    text = _read("/etc/os-release") or _read("/usr/lib/os-release") or ""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"')
    return fields


def _free_bytes(path):
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path or "/").free
    except OSError:
        return None


def _sudo_ok():
    if os.geteuid() == 0:
        return True
    if not shutil.which("sudo"):
        return False
    try:
        return subprocess.run(["sudo", "-n", "true"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _board_onnxruntime():
    """The onnxruntime the board's own python3 imports, asked in a child (an import may abort)."""
    code = ("import json, onnxruntime as o; print(json.dumps({'version': o.__version__, "
            "'providers': o.get_available_providers(), 'path': o.__file__}))")
    try:
        done = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    try:
        return json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _venv_ok():
    import importlib.util
    # Debian ships ensurepip apart from python3 (python3-venv); venv cannot work without it
    return all(importlib.util.find_spec(m) is not None for m in ("venv", "ensurepip"))


def _state(prefix):
    text = _read(os.path.join(prefix, STATE))
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return {"unreadable": True}


def _libc():
    """("glibc", "2.31"): asked of the C library itself (platform.libc_ver() reads through the
    whole Python binary, which costs a slow board a good part of a second)."""
    try:
        name, _, version = os.confstr("CS_GNU_LIBC_VERSION").partition(" ")
        if name == "glibc" and version:
            return name, version
    except (AttributeError, ValueError, OSError):
        pass
    return platform.libc_ver()


def probe(prefix, onnxruntime="ask"):
    prefix = os.path.expanduser(prefix)
    libc, libc_version = _libc()
    state = _state(prefix)
    pki = os.path.join(prefix, "etc", "pki")
    systemd = os.path.isdir("/run/systemd/system") and bool(shutil.which("systemctl"))
    out = {
        "arch": platform.machine(),
        "system": platform.system(),
        "os": _os_release(),
        "libc": libc,
        "libc_version": libc_version,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "venv": _venv_ok(),
        "free_bytes": _free_bytes(prefix),
        "user": _user_name(),
        "uid": os.geteuid(),
        "home": os.path.expanduser("~"),
        "root": os.geteuid() == 0,
        "sudo": _sudo_ok(),
        "systemd": systemd,
        "useradd": bool(shutil.which("useradd")),
        "runuser": bool(shutil.which("runuser")),
        "prefix": prefix,
        "state": state,
        "ca_pem": _read(os.path.join(pki, "ca-cert.pem")),
        "cert_pem": _read(os.path.join(pki, "agent-cert.pem")),
        "onnxruntime": _board_onnxruntime() if onnxruntime == "ask" else None,
    }
    if state and systemd:
        out["service_active"] = subprocess.run(
            ["systemctl", "is-active", "--quiet", "edgetune-agent.service"],
            stdin=subprocess.DEVNULL).returncode == 0
    else:
        out["service_active"] = _alive(prefix)[0]
    return out


def _user_name():
    try:
        import pwd
        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


def sha256(files):
    out = {}
    for name in files:
        try:
            h = hashlib.sha256()
            size = 0
            with open(name, "rb") as f:
                for block in iter(lambda: f.read(CHUNK), b""):
                    h.update(block)
                    size += len(block)
            out[name] = [size, h.hexdigest()]
        except OSError:
            out[name] = [0, None]
    return out


def _pid_file(prefix):
    return os.path.join(prefix, "run", "agent.pid")


def _alive(prefix):
    try:
        with open(_pid_file(prefix)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return False, None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, pid
    except PermissionError:
        return True, pid
    # a zombie or a reused pid of another program is not our agent
    cmdline = _read("/proc/%d/cmdline" % pid) or ""
    return ("edgetune-agent" in cmdline or "edgetune.device" in cmdline), pid


def start(prefix, user):
    prefix = os.path.expanduser(prefix)
    alive, pid = _alive(prefix)
    if alive:
        return {"started": False, "pid": pid}
    agent = os.path.join(prefix, "current", "venv", "bin", "edgetune-agent")
    config = os.path.join(prefix, "etc", "agent.toml")
    log_path = os.path.join(prefix, "log", "agent.log")
    preexec = None
    if user and user != _user_name():
        import pwd
        entry = pwd.getpwnam(user)

        def drop():  # runs in the child before exec: become the service user
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
        preexec = drop
    with open(log_path, "ab") as log, open(os.devnull, "rb") as null:
        proc = subprocess.Popen([agent, "serve", "--config", config], stdin=null, stdout=log,
                                stderr=log, cwd=prefix, start_new_session=True,
                                close_fds=True, preexec_fn=preexec)
    with open(_pid_file(prefix) + ".tmp", "w") as f:
        f.write("%d\n" % proc.pid)
    os.replace(_pid_file(prefix) + ".tmp", _pid_file(prefix))
    return {"started": True, "pid": proc.pid}


def stop(prefix):
    prefix = os.path.expanduser(prefix)
    alive, pid = _alive(prefix)
    if not alive:
        return {"stopped": False, "pid": pid}
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(prefix)[0]:
        time.sleep(0.05)
    if _alive(prefix)[0]:
        os.kill(pid, signal.SIGKILL)
    try:
        os.unlink(_pid_file(prefix))
    except OSError:
        pass
    return {"stopped": True, "pid": pid}


def tail(path, count):
    text = _read(os.path.expanduser(path), 1 << 24)
    if text is None:
        return {"lines": None}
    return {"lines": text.splitlines()[-count:]}


def main(argv):
    command, args = argv[0], argv[1:]
    if command == "probe":
        out = probe(*args[:2])
    elif command == "sha256":
        out = sha256(args)
    elif command == "start":
        out = start(args[0], args[1])
    elif command == "stop":
        out = stop(args[0])
    elif command == "alive":
        alive, pid = _alive(os.path.expanduser(args[0]))
        out = {"alive": alive, "pid": pid}
    elif command == "tail":
        out = tail(args[0], int(args[1]))
    else:
        sys.stderr.write("unknown command %r\n" % command)
        return 2
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
