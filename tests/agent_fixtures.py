"""A real agent for tests: in-process (a grpc.aio server in a background thread's event loop)
or as a subprocess (``python -m edgetune.device serve ... --ready-file``), plus tiny ONNX models and
datasets built in code, and helpers for raw ``AgentStub`` calls.

In-process:   ``agent = start_agent(pki, tmp_path)`` ... ``agent.stop()``
              (or the ``agent`` fixture in tests/test_device_agent_*.py)
Subprocess:   ``proc, address = spawn_agent(pki, tmp_path)`` (waits for the ready file)

Every RPC helper takes a timeout; nothing here downloads anything.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import grpc
import numpy as np

from edgetune.certs.grpc_creds import channel_credentials
from edgetune.protos import agent_pb2 as pb
from edgetune.protos import agent_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0
CHUNK = 1 << 20


# ---------------------------------------------------------------------------- agent in-process

class InProcessAgent:
    """An ``AgentServer`` running in its own thread and event loop."""

    def __init__(self, config: Any, identity: Any, **server_kwargs: Any) -> None:
        from edgetune.device.server import AgentServer
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run_loop, name="test-agent", daemon=True)
        self.thread.start()
        self.server = AgentServer(config, identity, **server_kwargs)
        try:
            self.port = self.call(self.server.start())
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            raise
        self.address = f"127.0.0.1:{self.port}"
        self._stopped = False

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Any, timeout: float = TIMEOUT) -> Any:
        """Run ``coro`` on the agent's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self.call(self.server.stop(grace), timeout=grace + 30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            if not self.thread.is_alive():
                self.loop.close()


def agent_config(pki: Any, store: Path, **overrides: Any) -> Any:
    """An AgentConfig on 127.0.0.1 port 0 with the test PKI's board1 identity."""
    from edgetune.device.config import AgentConfig
    values: Dict[str, Any] = dict(listen="127.0.0.1:0", ca=pki.ca_cert, cert=pki.device.cert,
                                  key=pki.device.key, store=Path(store), log_level="debug")
    values.update(overrides)
    return AgentConfig(**values)


def start_agent(pki: Any, store: Path, **overrides: Any) -> InProcessAgent:
    """Start an in-process agent serving ``store``; ``overrides`` go to AgentConfig."""
    return InProcessAgent(agent_config(pki, store, **overrides), pki.device.identity)


# ---------------------------------------------------------------------------- clients

def channel(address: str, identity: Any = None, *, ca_pem: Optional[bytes] = None,
            server_name: str = "") -> grpc.Channel:
    """A synchronous mutual-TLS channel; ``identity`` None means no client certificate."""
    if identity is None:
        creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    else:
        creds = channel_credentials(ca_pem or identity.ca_pem, identity.cert_pem, identity.key_pem)
    options = [("grpc.max_receive_message_length", 64 << 20)]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(address, creds, options=options)


def stub(address: str, identity: Any) -> agent_pb2_grpc.AgentStub:
    return agent_pb2_grpc.AgentStub(channel(address, identity))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_blobs_named_by_content(store_root: Path) -> int:
    """The store's core promise: every complete blob's file name is the sha256 of its bytes.
    Returns how many blobs were checked."""
    checked = 0
    for folder, suffix in (("models", ".onnx"), ("datasets", ".npz")):
        for blob in sorted((Path(store_root) / folder).glob("*" + suffix)):
            assert sha256_hex(blob.read_bytes()) == blob.name[:-len(suffix)], \
                f"{blob} is not named by the sha256 of its content"
            checked += 1
    return checked


def upload_requests(kind: int, data: bytes, *, name: str = "", offset: int = 0,
                    size: Optional[int] = None, sha256: Optional[str] = None,
                    chunk: int = CHUNK) -> Iterator[pb.UploadBlobRequest]:
    yield pb.UploadBlobRequest(header=pb.UploadHeader(
        kind=kind, sha256=sha256 or sha256_hex(data), size_bytes=len(data) if size is None else size,
        name=name, offset=offset))
    view = memoryview(data)
    for start in range(offset, len(data), chunk):
        yield pb.UploadBlobRequest(data=bytes(view[start:start + chunk]))


def upload(agent_stub: agent_pb2_grpc.AgentStub, kind: int, data: bytes, *, name: str = "",
           timeout: float = TIMEOUT, **kwargs: Any) -> pb.UploadBlobResponse:
    return agent_stub.UploadBlob(upload_requests(kind, data, name=name, **kwargs), timeout=timeout)


def upload_model(agent_stub: agent_pb2_grpc.AgentStub, model_bytes: bytes, name: str = "m") -> str:
    return upload(agent_stub, pb.BLOB_KIND_MODEL, model_bytes, name=name).blob.sha256


def upload_dataset(agent_stub: agent_pb2_grpc.AgentStub, npz_bytes: bytes, name: str = "d") -> str:
    return upload(agent_stub, pb.BLOB_KIND_DATASET, npz_bytes, name=name).blob.sha256


def submit_benchmark(agent_stub: agent_pb2_grpc.AgentStub, model_sha: str, *,
                     timeout: float = TIMEOUT, label: str = "", shapes: Optional[Dict[str, Sequence[int]]] = None,
                     **fields: Any) -> pb.SubmitJobResponse:
    bench = pb.BenchmarkSpec(model_sha256=model_sha, **fields)
    for name, dims in (shapes or {}).items():
        bench.session.input_shapes[name].dims.extend(dims)
    return agent_stub.SubmitJob(pb.SubmitJobRequest(spec=pb.JobSpec(benchmark=bench, label=label)),
                                timeout=timeout)


def wait_job(agent_stub: agent_pb2_grpc.AgentStub, job_id: str, timeout: float = 60.0) -> pb.Job:
    """Poll GetJob until the job has finished."""
    deadline = time.monotonic() + timeout
    while True:
        job = agent_stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=TIMEOUT).job
        if job.state not in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {pb.JobState.Name(job.state)} after {timeout} s")
        time.sleep(0.05)


# ---------------------------------------------------------------------------- models, datasets

def mlp_model(*, inputs: int = 16, hidden: int = 64, outputs: int = 10, batch: Any = 1,
              layers: int = 1, seed: int = 0) -> bytes:
    """A small float32 MLP ``x [batch, inputs] -> y [batch, outputs]``; ``batch`` may be a
    symbolic name (a dynamic dimension). More ``layers`` make it slower per run."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, width = "x", inputs
    for i in range(layers):
        w = numpy_helper.from_array(rng.standard_normal((width, hidden)).astype(np.float32) * 0.1,
                                    f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"], name=f"matmul{i}"))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"))
        prev, width = f"r{i}", hidden
    wo = numpy_helper.from_array(rng.standard_normal((width, outputs)).astype(np.float32) * 0.1, "wo")
    inits.append(wo)
    nodes.append(helper.make_node("MatMul", [prev, "wo"], ["y"], name="head"))
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, outputs])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def relu_model(shape: Sequence[Any]) -> bytes:
    """``x -> y`` (Relu) with input and output of ``shape``: ints, symbolic names or None
    (unknown), to try what the agent does with each kind of dimension."""
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def identity_model(classes: int = 4) -> bytes:
    """``x [1, classes] -> y [1, classes]`` (Identity): logits in = logits out."""
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="id")], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, classes])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def model_with_external_data(location: str) -> bytes:
    """A model whose initializer claims to live in the external file ``location``."""
    import onnx
    from onnx import TensorProto, helper
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 4])
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def npz_bytes(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def top1_dataset(classes: int = 4, samples: int = 8, correct: int = 6, seed: int = 0) -> bytes:
    """For ``identity_model``: logits whose argmax equals the label in ``correct`` of
    ``samples`` rows, so top1 = correct / samples exactly; reference outputs ``y`` equal the
    inputs (what an Identity model returns), so fidelity is perfect."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=samples).astype(np.int64)
    x = rng.random((samples, classes)).astype(np.float32)
    for i in range(samples):
        target = labels[i] if i < correct else (labels[i] + 1) % classes
        x[i, target] = 2.0
    return npz_bytes(x=x, labels=labels, y=x.copy())


# ---------------------------------------------------------------------------- subprocess agent

def agent_argv(pki: Any, store: Path, ready_file: Path, *extra: str) -> List[str]:
    return [sys.executable, "-m", "edgetune.device", "serve", "--listen", "127.0.0.1:0",
            "--ca", str(pki.ca_cert), "--cert", str(pki.device.cert), "--key", str(pki.device.key),
            "--store", str(store), "--ready-file", str(ready_file), *extra]


def agent_env(pki: Any) -> Dict[str, str]:
    env = dict(os.environ)
    env["EDGETUNE_PASSPHRASE"] = pki.passphrase.decode()
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def wait_ready(proc: subprocess.Popen, ready_file: Path, log_file: Path,
               timeout: float = 30.0) -> str:
    """The address in ``ready_file`` once it appears; fails with the agent's log if the
    agent exits first or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready_file.exists():
            text = ready_file.read_text().strip()
            if text:
                return text
        if proc.poll() is not None:
            raise AssertionError(f"agent exited with {proc.returncode} before it was ready:\n"
                                 + log_file.read_text(errors="replace"))
        time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    raise AssertionError(f"agent not ready after {timeout} s:\n"
                         + log_file.read_text(errors="replace"))


def spawn_agent(pki: Any, store: Path, ready_file: Path, *extra: str,
                log_file: Optional[Path] = None) -> Tuple[subprocess.Popen, str, Path]:
    """Start ``python -m edgetune.device serve`` and wait until it is SERVING.

    Returns (process, address from the ready file, the file that collects its log)."""
    if ready_file.exists():
        ready_file.unlink()
    log_file = log_file or ready_file.with_name(ready_file.name + ".log")
    with open(log_file, "ab") as err:
        proc = subprocess.Popen(agent_argv(pki, store, ready_file, *extra), env=agent_env(pki),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    return proc, wait_ready(proc, ready_file, log_file), log_file
