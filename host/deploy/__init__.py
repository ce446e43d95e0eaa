"""``edgetune deploy``: put the agent on a board over SSH and keep it there.

Modules, in the order a deploy uses them: ``settings`` (the flags and the inventory's record as
frozen settings; ~/.ssh/config), ``ssh`` (one paramiko session: run, boardctl, sftp) with
``hostkeys`` (strict checking), ``probe`` (what the board is, via ``boardctl``, the helper sent
to the board's own Python), ``wheelhouse`` (the wheels for the board's platform), ``transfer``
(SFTP, resumable, sha256-checked), ``device_certs`` (the board's certificate), ``service``
(agent.toml and the systemd unit from ``templates/``, or a detached agent), ``health``
(grpc.health.v1 over mutual TLS), ``record`` (edgetune.toml), ``steps`` (the sequence,
upgrade and rollback) and ``actions`` (status, logs, remove). The CLI is
``edgetune.host.cli.deploy_cmd``.
"""
