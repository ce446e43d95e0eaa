"""Job output files (``EvaluateSpec.dump_outputs``, ``ReadJobOutput``) on a real agent over
mutual TLS: the file's records are the model's own outputs, it streams in chunks of the size
asked and resumes by offset after a dropped stream; only the submitting certificate reads it;
sizes, chunk sizes and retention follow the agent.toml limits; every bad request is refused
with a message that says why."""

from __future__ import annotations

import json
import math
import re
import struct
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from edgetune.certs.pki import Identity
from edgetune.device.joboutput import MAGIC
from edgetune.host.board import BoardSession
from edgetune.host.client import AgentClient
from edgetune.host.errors import AuthError, BadInputError, NotFoundError
from edgetune.protos import agent_pb2 as pb
from edgetune.protos import agent_pb2_grpc
from edgetune.protos.messages import EvaluateSpec
from tests.agent_fixtures import channel
from tests.host_fixtures import (DIGITS_MODEL, RunningAgent, TcpProxy, local_agent,  # noqa: F401
                                 start_agent)

TIMEOUT = 60.0
SAMPLES = 40
SMALL_LIMIT = 4096                      # max_job_output_bytes of the "small" agent


def _identity(pki: Any, name: str) -> Identity:
    leaf = pki.ca.issue_host(name, key_type=pki.key_type)
    return Identity(ca_pem=pki.ca.cert_pem, cert_pem=leaf.cert_pem, key_pem=leaf.key_pem,
                    common_name=name)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, np.ndarray]:
    """SAMPLES digits as a dataset holding inputs only (no labels, no references)."""
    x = np.load(DIGITS_MODEL.parent / "digits_test.npz")["input"][:SAMPLES]
    path = tmp_path_factory.mktemp("inputs") / "inputs.npz"
    np.savez(str(path), input=x)
    return path, x


@pytest.fixture(scope="module")
def small(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    """An agent whose agent.toml keeps job outputs small, few and briefly."""
    work = tmp_path_factory.mktemp("small")
    config = work / "agent.toml"
    config.write_text(f"[limits]\nmax_job_output_bytes = {SMALL_LIMIT}\nmax_job_outputs = 2\n"
                      "job_output_ttl_s = 4\nmax_output_chunk_bytes = 8192\n")
    running = start_agent(pki, work, extra_args=["--config", str(config)])
    try:
        yield running
    finally:
        running.agent.stop()


def wide_model(path: Path, repeats: int) -> Path:
    """The digits model with a second output: its logits tiled ``repeats`` times."""
    import onnx
    from onnx import helper, numpy_helper
    model = onnx.load(str(DIGITS_MODEL))
    model.graph.node.append(helper.make_node("Tile", ["logits", "reps"], ["wide"]))
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, repeats], np.int64),
                                                           "reps"))
    model.graph.output.append(helper.make_tensor_value_info("wide", onnx.TensorProto.FLOAT,
                                                            None))
    onnx.save(model, str(path))
    return path


def _session(agent: RunningAgent, identity: Any = None) -> BoardSession:
    return BoardSession(AgentClient(agent.address, identity or agent.pki.host.identity), "b")


def _dump(board: BoardSession, data: Path, outputs: Tuple[str, ...] = ("logits",),
          model: Path = DIGITS_MODEL) -> Any:
    return board.evaluate(model, data, EvaluateSpec(model_sha256="", dataset_sha256="",
                                                    dump_outputs=outputs))


def _records(raw: bytes) -> List[Tuple[Dict[str, Any], np.ndarray]]:
    """The records of a whole output file, parsed independently of the host's reader."""
    assert raw.startswith(MAGIC)
    pos, out = len(MAGIC), []
    while pos < len(raw):
        (length,) = struct.unpack_from("<I", raw, pos)
        head = json.loads(raw[pos + 4:pos + 4 + length])
        pos += 4 + length
        value = np.frombuffer(raw[pos:pos + head["bytes"]], np.dtype(head["dtype"]))
        out.append((head, value.reshape(head["shape"])))
        pos += head["bytes"]
    return out


def _stub(agent: RunningAgent, identity: Any = None) -> agent_pb2_grpc.AgentStub:
    return agent_pb2_grpc.AgentStub(channel(agent.address, identity or agent.pki.host.identity))


def _read(stub: Any, job_id: str, **kwargs: Any) -> List[Any]:
    return list(stub.ReadJobOutput(pb.ReadJobOutputRequest(job_id=job_id, **kwargs),
                                   timeout=TIMEOUT))


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 KB of "wide" a sample: SAMPLES of them make a file of 1.6 MB."""
    return wide_model(tmp_path_factory.mktemp("wide") / "wide.onnx", 1000)


@pytest.fixture(scope="module")
def dumped(local_agent: RunningAgent, inputs: Tuple[Path, np.ndarray],  # noqa: F811
           wide: Path) -> Any:
    with _session(local_agent) as board:
        run = _dump(board, inputs[0], ("logits", "wide"), model=wide)
        assert run.ok, run.error
        raw = b"".join(c.data for c in board.read_output(run))
    return run, raw


def test_the_file_holds_the_models_outputs_sample_by_sample(dumped: Any, wide: Path,
                                                            inputs: Tuple[Path, np.ndarray]
                                                            ) -> None:
    run, raw = dumped
    assert run.result.output_bytes == len(raw) > 1_600_000 and run.result.metrics == ()
    records = _records(raw)
    assert [(h["sample"], h["name"]) for h, _ in records] == \
        [(i, name) for i in range(SAMPLES) for name in ("logits", "wide")]
    session = ort.InferenceSession(str(wide), providers=["CPUExecutionProvider"])
    for head, value in records:
        i = head["sample"]
        expected = session.run([head["name"]], {"input": inputs[1][i:i + 1]})[0][0]
        assert head["shape"] == list(expected.shape) and head["dtype"] == "float32"
        np.testing.assert_array_equal(value, expected)       # the same kernels: exact


def test_chunks_of_the_size_asked_and_resume_by_offset(local_agent: RunningAgent,  # noqa: F811
                                                       dumped: Any) -> None:
    run, raw = dumped
    stub = _stub(local_agent)
    chunks = _read(stub, run.job_id, chunk_bytes=4096)
    assert len(chunks) == math.ceil(len(raw) / 4096) > 1
    assert all(c.total_bytes == len(raw) for c in chunks)
    assert [c.offset for c in chunks] == list(range(0, len(raw), 4096))
    # A stream dropped after two chunks, resumed from the byte after the last one received.
    call = stub.ReadJobOutput(pb.ReadJobOutputRequest(job_id=run.job_id, chunk_bytes=4096),
                              timeout=TIMEOUT)
    got = [next(call).data, next(call).data]
    call.cancel()
    with pytest.raises(grpc.RpcError) as dropped:
        list(call)
    assert dropped.value.code() is grpc.StatusCode.CANCELLED
    rest = _read(stub, run.job_id, offset=8192, chunk_bytes=4096)
    assert rest[0].offset == 8192
    assert b"".join(got) + b"".join(c.data for c in rest) == raw
    # At the end: one empty chunk that says the size.
    end = _read(stub, run.job_id, offset=len(raw))
    assert [(c.offset, c.data, c.total_bytes) for c in end] == [(len(raw), b"", len(raw))]


def test_the_client_resumes_a_stream_cut_by_the_network(local_agent: RunningAgent,  # noqa: F811
                                                        dumped: Any) -> None:
    run, raw = dumped
    proxy = TcpProxy(local_agent.address)
    try:
        client = AgentClient(proxy.address, local_agent.pki.host.identity)
        with BoardSession(client, "via-proxy") as board:
            stream = board.read_output(run, chunk_bytes=4096)
            parts = []
            for chunk in stream:
                parts.append(chunk.data)
                if len(parts) == 2:
                    proxy.cut()                 # every live connection dropped
        assert b"".join(parts) == raw
        assert stream.resumes >= 1 and stream.offset == len(raw)
    finally:
        proxy.close()


def test_only_the_submitting_certificate_reads_the_output(local_agent: RunningAgent,  # noqa: F811
                                                          pki: Any, dumped: Any) -> None:
    run, _ = dumped
    other = _identity(pki, "desktop")                   # same CA, another name
    with pytest.raises(grpc.RpcError) as refused:
        _read(_stub(local_agent, other), run.job_id)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "only the certificate that submitted a job may read its output" in \
        refused.value.details()
    with _session(local_agent, other) as board:
        with pytest.raises(AuthError) as err:
            list(board.read_output(run))
    assert "'desktop'" in err.value.message and "submitted the job" in (err.value.hint or "")


@pytest.mark.parametrize("request_fields, code, words", [
    ({"job_id": "../../models/x"}, grpc.StatusCode.INVALID_ARGUMENT, "32 lowercase hex"),
    ({"job_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "32 lowercase hex"),
    ({"job_id": "0" * 32}, grpc.StatusCode.NOT_FOUND, "does not exist"),
    ({"chunk_bytes": 100}, grpc.StatusCode.INVALID_ARGUMENT, "chunk_bytes must be 0"),
    ({"chunk_bytes": 64 << 20}, grpc.StatusCode.INVALID_ARGUMENT, "chunk_bytes must be 0"),
    ({"offset": -1}, grpc.StatusCode.INVALID_ARGUMENT, "outside"),
    ({"offset": 1 << 40}, grpc.StatusCode.INVALID_ARGUMENT, "outside"),
])
def test_bad_requests_are_refused(local_agent: RunningAgent, dumped: Any,  # noqa: F811
                                  request_fields: Dict[str, Any], code: Any, words: str) -> None:
    run, _ = dumped
    fields = {"job_id": run.job_id, **request_fields}
    with pytest.raises(grpc.RpcError) as refused:
        _read(_stub(local_agent), **fields)
    assert refused.value.code() is code and words in refused.value.details(), \
        refused.value.details()


def test_a_job_without_an_output_file(local_agent: RunningAgent) -> None:  # noqa: F811
    with _session(local_agent) as board:
        plain = board.evaluate(DIGITS_MODEL, DIGITS_MODEL.parent / "digits_test.npz",
                               EvaluateSpec(model_sha256="", dataset_sha256=""))
        assert plain.ok
        with pytest.raises(BadInputError):
            board.read_output(plain)
    with pytest.raises(grpc.RpcError) as refused:
        _read(_stub(local_agent), plain.job_id)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "wrote no output file" in refused.value.details()


def test_an_output_the_model_lacks_fails_the_job_and_leaves_no_file(
        local_agent: RunningAgent, inputs: Tuple[Path, np.ndarray]) -> None:  # noqa: F811
    with _session(local_agent) as board:
        run = _dump(board, inputs[0], ("logits", "no_such_tensor"))
    assert not run.ok and "'no_such_tensor', which the model does not output" in run.error
    assert not list((local_agent.store / "job-output").glob(f"{run.job_id}*"))
    with pytest.raises(grpc.RpcError) as refused:
        _read(_stub(local_agent), run.job_id)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("outputs, words", [
    (("logits", "logits"), "more than once"),
    (("",), "1 to 1024 characters"),
    (("x" * 2000,), "1 to 1024 characters"),
    (tuple(f"t{i}" for i in range(4097)), "at most 4096 outputs"),
])
def test_bad_dump_outputs_are_refused_at_submit(local_agent: RunningAgent,  # noqa: F811
                                                inputs: Tuple[Path, np.ndarray],
                                                outputs: Tuple[str, ...], words: str) -> None:
    with _session(local_agent) as board:
        with pytest.raises(BadInputError) as err:
            _dump(board, inputs[0], outputs)
    assert words in err.value.message, err.value.message


def test_a_file_beyond_the_boards_limit_fails_the_job_saying_how_many_fit(
        small: RunningAgent, inputs: Tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """Two outputs: logits (10 floats) and a wide copy (200 floats): 40 samples of both pass
    the agent's 4096 bytes, logits alone do not either, so 0 fit; with 8 samples, 1 fits."""
    path = wide_model(tmp_path / "wide.onnx", 20)
    few = tmp_path / "few.npz"
    np.savez(str(few), input=inputs[1][:8])
    with _session(small) as board:
        assert board.board.agent.max_job_output_bytes == SMALL_LIMIT
        run = _dump(board, few, ("logits", "wide"), model=path)
        assert not run.ok
        assert re.search(r"the 2 outputs asked for take .* over 8 samples", run.error), run.error
        assert "1 of the 2 outputs fit" in run.error and "max_job_output_bytes" in run.error
        run = _dump(board, inputs[0], ("logits", "wide"), model=path)
        assert not run.ok and "0 of the 2 outputs fit" in run.error
    assert not list((small.store / "job-output").glob("*"))


def test_retention_keeps_few_files_for_a_while(small: RunningAgent,
                                               inputs: Tuple[Path, np.ndarray],
                                               tmp_path: Path) -> None:
    few = tmp_path / "few.npz"
    np.savez(str(few), input=inputs[1][:4])
    with _session(small) as board:
        runs = [_dump(board, few) for _ in range(3)]
        assert all(r.ok for r in runs), [r.error for r in runs]
        with pytest.raises(NotFoundError) as gone:      # max_job_outputs = 2: the oldest went
            list(board.read_output(runs[0]))
        assert "no longer on the board" in gone.value.message
        assert "max_job_outputs" in gone.value.message
        assert len(b"".join(c.data for c in board.read_output(runs[2]))) == \
            runs[2].result.output_bytes
        # max_output_chunk_bytes = 8192 in its agent.toml: a larger chunk is refused.
        with pytest.raises(BadInputError) as big:
            list(board.read_output(runs[2], chunk_bytes=16384))
        assert "max_output_chunk_bytes" in big.value.message
        time.sleep(4.5)                                  # job_output_ttl_s = 4
        with pytest.raises(NotFoundError):
            list(board.read_output(runs[2]))
    assert not list((small.store / "job-output").glob("*.out"))


def test_a_non_numeric_output_cannot_be_written(local_agent: RunningAgent,  # noqa: F811
                                                inputs: Tuple[Path, np.ndarray],
                                                tmp_path: Path) -> None:
    import onnx
    from onnx import helper
    model = onnx.load(str(DIGITS_MODEL))
    model.graph.node.append(helper.make_node("Cast", ["logits"], ["as_text"],
                                             to=onnx.TensorProto.STRING))
    model.graph.output.append(helper.make_tensor_value_info("as_text", onnx.TensorProto.STRING,
                                                            None))
    path = tmp_path / "text.onnx"
    onnx.save(model, str(path))
    with _session(local_agent) as board:
        run = _dump(board, inputs[0], ("as_text",), model=path)
    assert not run.ok and "'as_text' holds object values" in run.error, run.error
    assert not list((local_agent.store / "job-output").glob(f"{run.job_id}*"))


@pytest.mark.parametrize("value", [100, 64 << 20])
def test_the_chunk_limit_itself_is_bounded(value: int) -> None:
    from edgetune.device.config import ConfigError, limits_from_table
    with pytest.raises(ConfigError) as err:
        limits_from_table({"max_output_chunk_bytes": value})
    assert "max_output_chunk_bytes must be between 4096 and 4194304" in str(err.value)
