"""The agent signs what it measured: a real in-process agent (mutual TLS), RSA and ECDSA keys,
the signature kept in the job database across a restart, and an older job database upgraded."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from edgetune.certs import signing
from edgetune.protos import agent_pb2 as pb
from edgetune.protos.messages import Job
from tests.agent_fixtures import (TIMEOUT, mlp_model, start_agent, stub, submit_benchmark,
                                  upload_model, wait_job)


def _check(job: pb.Job, pki: Any) -> dict:
    """The signed document of ``job``, once its signature checks against the PKI's CA."""
    assert job.HasField("signed")
    signed = job.signed
    cert = x509.load_pem_x509_certificate(signed.agent_cert_pem.encode())
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    signing.check_agent_cert(cert, [ca])
    signing.check_signature(cert, signed.payload, signed.signature, signed.algorithm)
    return signing.decode_payload(signed.payload)


@pytest.mark.parametrize("which", ["pki", "rsa_pki"])
def test_an_rsa_and_an_ecdsa_agent_sign_every_number_they_measured(
        which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    pki = request.getfixturevalue(which)
    agent = start_agent(pki, tmp_path / "store")
    try:
        s = stub(agent.address, pki.host.identity)
        sha = upload_model(s, mlp_model())
        job_id = submit_benchmark(s, sha, iterations=30, warmup=2, return_samples=True,
                                  label="signed").job.id
        job = wait_job(s, job_id)
    finally:
        agent.stop()
    doc = _check(job, pki)
    assert job.signed.algorithm == ("rsa-pss-sha256" if which == "rsa_pki"
                                    else "ecdsa-p256-sha256")
    assert job.signed.payload.startswith(b"edgetune-result-v1\n{")
    assert doc["model_sha256"] == sha and doc["dataset_sha256"] == ""
    assert doc["agent"]["name"] == "board1"
    assert doc["agent"]["onnxruntime_version"] and doc["agent"]["python_version"]
    assert doc["job"]["id"] == job_id and doc["job"]["label"] == "signed"
    assert doc["job"]["finished_unix"] == job.finished_unix
    assert doc["job"]["spec"]["iterations"] == 30 and doc["job"]["spec"]["return_samples"]
    result = doc["job"]["result"]
    assert result["latency"]["p50_ms"] == job.benchmark.latency.p50_ms
    assert result["samples_ms_count"] == 30
    assert result["samples_ms_sha256"] == signing.samples_digest(list(job.benchmark.samples_ms))
    cert = x509.load_pem_x509_certificate(job.signed.agent_cert_pem.encode())
    assert doc["agent"]["cert_sha256"] == signing.cert_sha256(cert)


def test_the_signature_is_kept_across_a_restart_and_listed(pki: Any, tmp_path: Path) -> None:
    store = tmp_path / "store"
    agent = start_agent(pki, store)
    s = stub(agent.address, pki.host.identity)
    job_id = submit_benchmark(s, upload_model(s, mlp_model()), iterations=10).job.id
    first = wait_job(s, job_id)
    agent.stop()
    again = start_agent(pki, store)
    try:
        s = stub(again.address, pki.host.identity)
        fetched = s.GetJob(pb.GetJobRequest(job_id=job_id), timeout=TIMEOUT).job
        listed = s.ListJobs(pb.ListJobsRequest(), timeout=TIMEOUT).jobs[0]
        watched = list(s.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=TIMEOUT))[-1].job
    finally:
        again.stop()
    for job in (fetched, listed, watched):
        assert job.signed == first.signed
        _check(job, pki)


def test_a_job_database_of_an_older_agent_gains_the_column_and_keeps_its_jobs(
        pki: Any, tmp_path: Path) -> None:
    """An agent's jobs.db from before signatures (no ``signed`` column) still opens: its old
    jobs read as unsigned, new jobs are signed."""
    store = tmp_path / "store"
    store.mkdir()
    old = sqlite3.connect(str(store / "jobs.db"))
    old.executescript("""
        CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL, state TEXT NOT NULL, label TEXT NOT NULL DEFAULT '',
            client TEXT NOT NULL DEFAULT '', spec TEXT NOT NULL, created_unix REAL NOT NULL,
            started_unix REAL NOT NULL DEFAULT 0, finished_unix REAL NOT NULL DEFAULT 0,
            error TEXT NOT NULL DEFAULT '', result TEXT);
        CREATE INDEX jobs_by_state ON jobs (state);""")
    spec = {"model_sha256": "a" * 64, "session": {}, "warmup": 1, "iterations": 1,
            "min_duration_s": 0.0, "seed": 0, "dataset_sha256": "", "return_samples": False}
    result = {"latency": {k: 1.0 for k in ("min_ms", "mean_ms", "std_ms", "p50_ms", "p90_ms",
                                           "p95_ms", "p99_ms", "max_ms")},
              "throughput_ips": 1000.0, "load_ms": 1.0, "first_run_ms": 1.0, "peak_rss_mb": 1.0,
              "iterations": 1, "warmup": 1, "measured_s": 0.001}
    old.execute("INSERT INTO jobs (id, kind, state, spec, created_unix, finished_unix, result) "
                "VALUES ('oldjob', 'benchmark', 'succeeded', ?, 1.0, 2.0, ?)",
                (json.dumps(spec), json.dumps(result)))
    old.commit()
    old.close()
    agent = start_agent(pki, store)
    try:
        s = stub(agent.address, pki.host.identity)
        kept = s.GetJob(pb.GetJobRequest(job_id="oldjob"), timeout=TIMEOUT).job
        assert kept.state == pb.JOB_STATE_SUCCEEDED and not kept.HasField("signed")
        assert Job.from_pb2(kept).signed is None
        new = wait_job(s, submit_benchmark(s, upload_model(s, mlp_model()), iterations=5).job.id)
        _check(new, pki)
    finally:
        agent.stop()


def test_every_samples_list_is_signed_by_its_digest() -> None:
    """A comparison's result holds samples per session: each becomes count + digest."""
    from edgetune.device.signing import _digested

    doc = _digested({"rounds": [{"a": {"samples_ms": [1.0, 2.0], "p50": 1.5}},
                                {"b": {"samples_ms": []}}], "samples_ms": [0.5]})
    assert doc == {"rounds": [{"a": {"samples_ms_count": 2, "p50": 1.5,
                                     "samples_ms_sha256": signing.samples_digest([1.0, 2.0])}},
                              {"b": {"samples_ms_count": 0,
                                     "samples_ms_sha256": signing.samples_digest([])}}],
                   "samples_ms_count": 1, "samples_ms_sha256": signing.samples_digest([0.5])}
    assert signing.canonical_json({"b": float("nan"), "a": [1, 2.5, 1e-05]}) == \
        b'{"a":[1,2.5,1e-05],"b":"NaN"}'
