"""Emulated boards for the slow ``board`` tests: a Debian 11 arm64 root file system run under
QEMU user emulation (``rootfs``), a cached layer with the agent's dependencies installed in it
(``layers``), and a running "board" with its own address and sshd in a network namespace
(``board``). ``python -m tests.emulated build`` makes (or refreshes) the cache, as CI's
``board-cache`` stage does. See docs/boards.md.
"""
