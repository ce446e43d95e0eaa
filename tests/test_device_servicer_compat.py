"""The agent's registration works with descriptors and servers of older protobuf/grpcio."""

from __future__ import annotations

from typing import Any, Dict

from edgetune.device.servicer import _streaming
from edgetune.protos import agent_pb2 as pb

METHODS = pb.DESCRIPTOR.services_by_name["Agent"].methods_by_name


class _OldDescriptor:
    """A method descriptor as protobuf's compiled modules before 4.25 expose it: no
    client_streaming/server_streaming attributes, only CopyToProto."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def CopyToProto(self, proto: Any) -> None:
        self._real.CopyToProto(proto)


def test_streaming_flags_from_old_descriptors_match_the_new_ones():
    expected: Dict[str, tuple] = {"UploadBlob": (True, False), "WatchJob": (False, True),
                                  "GetInfo": (False, False)}
    for name, flags in expected.items():
        method = METHODS[name]
        assert not hasattr(_OldDescriptor(method), "client_streaming")
        assert _streaming(_OldDescriptor(method)) == flags
        assert _streaming(method) == flags
