"""Emulated boards for the slow ``board`` tests: Debian root file systems (Debian 11 arm64;
Debian 13 riscv64 with the distribution's onnxruntime) run under QEMU user emulation
(``rootfs``), a cached layer with the agent's dependencies installed in each (``layers``),
and a running "board" with its own address and sshd in a network namespace (``board``).
``python -m tests.emulated build`` makes (or refreshes) the cache, as CI's ``board-arm64`` and
``board-riscv64`` stages do. See docs/boards.md.
"""
