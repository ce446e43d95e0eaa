"""Signed result records end to end: a real agent subprocess signs, BoardSession records the
signature in a real results database (SQLite and PostgreSQL), ``results verify`` checks it
against the CA; every kind of tampering fails naming the record (and the field), unsigned
records are reported as such, and a database of the first schema upgrades."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator, Tuple

import pytest
import sqlalchemy as sa

from edgetune.certs import signing
from edgetune.exitcodes import ExitStatus
from edgetune.host.board import BoardSession
from edgetune.host.client import AgentClient
from edgetune.host.results import migrate
from edgetune.host.results.records import ModelRef, Record
from edgetune.host.results.recording import StoreRecorder
from edgetune.host.results.schema import results
from edgetune.host.results.store import ResultsStore
from edgetune.host.results.verify import INVALID, UNSIGNED, VALID, verify_record
from edgetune.protos.messages import BenchmarkSpec, CompareSpec, EvaluateSpec, SessionOptions
from tests.host_fixtures import (DIGITS_MODEL, DIGITS_TEST, RunningAgent, local_agent,  # noqa: F401
                                 run_cli, start_agent)

ONE = SessionOptions(input_shapes=(("input", (1, 1, 8, 8)),))
BENCH = BenchmarkSpec(model_sha256="", session=ONE, iterations=15, warmup=2, return_samples=True)


def bench_record(agent: RunningAgent, db_url: str, spec: BenchmarkSpec = BENCH) -> Record:
    """A benchmark through BoardSession, recorded by StoreRecorder; the stored record."""
    with ResultsStore.open(db_url) as store:
        recorder = StoreRecorder(store)
        client = AgentClient(agent.address, agent.pki.host.identity)
        with BoardSession(client, "board1", recorder=recorder) as session:
            run = session.benchmark(DIGITS_MODEL, spec)
        assert run.signed is not None
        return store.get(recorder.result_id(run))


def cas(pki: Any) -> list:
    return signing.load_cas(pki.ca_cert.read_bytes(), "ca")


def update(db_url: str, record_id: str, **values: Any) -> None:
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(results.update().where(results.c.id == record_id).values(**values))
    engine.dispose()


def verify_cli(capsys: Any, *args: str) -> Any:
    return run_cli(capsys, "results", "verify", *args)


@pytest.fixture
def signed(local_agent: RunningAgent, db_url: str) -> Tuple[Record, str]:
    return bench_record(local_agent, db_url), db_url


# ---------------------------------------------------------------------- what verifies

def test_a_bench_through_the_board_session_is_signed_and_verifies(
        signed: Tuple[Record, str], local_agent: RunningAgent, capsys: Any) -> None:
    record, db_url = signed
    assert record.signature is not None
    assert record.signature.algorithm == "ecdsa-p256-sha256"
    verdict = verify_record(record, cas(local_agent.pki))
    assert verdict.status == VALID and verdict.agent == "board1", verdict.problems
    assert verdict.unsigned_fields == ()                   # every field of it was signed

    ca = str(local_agent.pki.ca_cert)
    out = verify_cli(capsys, record.id[:10], "--db", db_url, "--ca", ca)
    assert out.code == 0 and f"result {record.id}: valid, signed by agent 'board1'" in out.out
    doc = verify_cli(capsys, record.id, "--db", db_url, "--ca", ca, "--json").json
    assert doc["ok"] and doc["verified"] == 1 and doc["results"][0]["status"] == "valid"

    shown = run_cli(capsys, "results", "show", record.id, "--db", db_url, "--json").json["result"]
    assert base64.b64decode(shown["signature"]) == record.signature.signature
    assert shown["signed_payload"].startswith("edgetune-result-v1\n{")
    assert shown["signature_algorithm"] == "ecdsa-p256-sha256"
    assert shown["agent_cert_pem"].startswith("-----BEGIN CERTIFICATE-----")
    listed = run_cli(capsys, "results", "list", "--db", db_url, "--json").json["results"][0]
    assert "signature" not in listed                       # listing leaves the signature out


def test_an_exported_file_verifies_with_only_the_ca(
        signed: Tuple[Record, str], local_agent: RunningAgent, tmp_path: Path,
        capsys: Any) -> None:
    record, db_url = signed
    exported = tmp_path / "export.json"
    assert run_cli(capsys, "results", "export", "--format", "json", "--db", db_url,
                   "-o", str(exported)).code == 0
    third_party = tmp_path / "elsewhere"
    third_party.mkdir()
    shutil.copy(exported, third_party / "export.json")
    shutil.copy(local_agent.pki.ca_cert, third_party / "ca-cert.pem")
    out = verify_cli(capsys, "--file", str(third_party / "export.json"),
                     "--ca", str(third_party / "ca-cert.pem"))
    assert out.code == 0 and "valid" in out.out and record.id in out.out


def test_openssl_alone_checks_an_exported_signature(
        signed: Tuple[Record, str], tmp_path: Path) -> None:
    """What docs/results.md tells a third party without edgetune to run."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl binary")
    record, _ = signed
    assert record.signature is not None
    (tmp_path / "payload").write_bytes(record.signature.payload)
    (tmp_path / "sig").write_bytes(record.signature.signature)
    (tmp_path / "agent.pem").write_text(record.signature.agent_cert_pem)
    subprocess.run(["openssl", "x509", "-in", "agent.pem", "-pubkey", "-noout", "-out",
                    "agent.pub"], cwd=tmp_path, check=True, timeout=60)
    done = subprocess.run(["openssl", "dgst", "-sha256", "-verify", "agent.pub", "-signature",
                           "sig", "payload"], cwd=tmp_path, capture_output=True, timeout=60)
    assert done.returncode == 0 and b"Verified OK" in done.stdout


def test_an_rsa_agent_signs_and_verifies(rsa_pki: Any, tmp_path: Path) -> None:
    agent = start_agent(rsa_pki, tmp_path / "agent")
    try:
        record = bench_record(agent, f"sqlite:///{tmp_path / 'results.db'}")
    finally:
        agent.agent.stop()
    assert record.signature is not None and record.signature.algorithm == "rsa-pss-sha256"
    assert verify_record(record, cas(rsa_pki)).status == VALID
    (tmp_path / "payload").write_bytes(record.signature.payload)
    (tmp_path / "sig").write_bytes(record.signature.signature)
    (tmp_path / "agent.pem").write_text(record.signature.agent_cert_pem)
    if shutil.which("openssl"):
        subprocess.run(["openssl", "x509", "-in", "agent.pem", "-pubkey", "-noout", "-out",
                        "agent.pub"], cwd=tmp_path, check=True, timeout=60)
        done = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt",
             "rsa_pss_saltlen:32", "-verify", "agent.pub", "-signature", "sig", "payload"],
            cwd=tmp_path, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr


def test_an_evaluation_is_signed_and_verifies(local_agent: RunningAgent, tmp_path: Path) -> None:
    with ResultsStore.open(f"sqlite:///{tmp_path / 'r.db'}") as store:
        recorder = StoreRecorder(store)
        client = AgentClient(local_agent.address, local_agent.pki.host.identity)
        with BoardSession(client, "board1", recorder=recorder) as session:
            run = session.evaluate(DIGITS_MODEL, DIGITS_TEST, EvaluateSpec(
                model_sha256="", dataset_sha256="", metrics=("top1",)))
        record = store.get(recorder.result_id(run))
    assert record.dataset_sha256 and verify_record(record, cas(local_agent.pki)).status == VALID


def test_a_job_fetched_after_an_agent_restart_still_verifies(pki: Any, tmp_path: Path) -> None:
    agent = start_agent(pki, tmp_path / "agent")
    try:
        client = AgentClient(agent.address, pki.host.identity)
        with BoardSession(client, "board1") as session:
            job_id = session.benchmark(DIGITS_MODEL, BENCH).job_id
    finally:
        agent.agent.stop()
    again = start_agent(pki, tmp_path / "agent")              # same store, a new process
    try:
        with ResultsStore.open(f"sqlite:///{tmp_path / 'r.db'}") as store:
            recorder = StoreRecorder(store)
            client = AgentClient(again.address, pki.host.identity)
            with BoardSession(client, "board1", recorder=recorder) as session:
                run = session.result(session.get_job(job_id))
            record = store.get(recorder.result_id(run))
    finally:
        again.agent.stop()
    assert record.job_id == job_id and record.signature is not None
    assert verify_record(record, cas(pki)).status == VALID


# ---------------------------------------------------------------------- what fails

def _failed(capsys: Any, record: Record, *args: str) -> str:
    out = verify_cli(capsys, *args)
    assert out.code == ExitStatus.AUTH, out
    assert f"result {record.id}: FAILED" in out.out
    assert record.id in out.err
    return out.out


def test_a_metric_changed_in_the_database_fails_naming_the_field(
        signed: Tuple[Record, str], local_agent: RunningAgent, capsys: Any) -> None:
    record, db_url = signed
    metrics = json.loads(json.dumps(dict(record.metrics)))
    metrics["latency_ms"]["p50"] = metrics["latency_ms"]["p50"] / 2
    update(db_url, record.id, metrics=metrics)
    text = _failed(capsys, record, record.id, "--db", db_url, "--ca", str(local_agent.pki.ca_cert))
    assert "field metrics.latency_ms.p50" in text


def test_an_option_or_the_job_id_changed_in_the_database_fails(
        signed: Tuple[Record, str], local_agent: RunningAgent) -> None:
    record, db_url = signed
    update(db_url, record.id, options=dict(record.options, iterations=1000), job_id="f" * 32)
    with ResultsStore.open(db_url) as store:
        verdict = verify_record(store.get(record.id), cas(local_agent.pki))
    assert verdict.status == INVALID
    assert any("field options.iterations" in p for p in verdict.problems)
    assert any("field job_id" in p for p in verdict.problems)


def test_a_changed_sample_fails(signed: Tuple[Record, str], local_agent: RunningAgent) -> None:
    record, _ = signed
    assert record.samples_ms
    changed = dataclasses.replace(record, samples_ms=(0.001,) + record.samples_ms[1:])
    verdict = verify_record(changed, cas(local_agent.pki))
    assert verdict.status == INVALID and "field samples_ms" in verdict.problems[0]


def test_a_metric_changed_in_the_exported_json_fails(
        signed: Tuple[Record, str], local_agent: RunningAgent, tmp_path: Path,
        capsys: Any) -> None:
    record, db_url = signed
    exported = tmp_path / "export.json"
    run_cli(capsys, "results", "export", "--format", "json", "--db", db_url, "-o", str(exported))
    doc = json.loads(exported.read_text())
    doc["results"][0]["metrics"]["throughput_ips"] *= 1.5
    exported.write_text(json.dumps(doc))
    text = _failed(capsys, record, "--file", str(exported), "--ca", str(local_agent.pki.ca_cert))
    assert "field metrics.throughput_ips" in text


def test_a_changed_payload_fails(signed: Tuple[Record, str], local_agent: RunningAgent,
                                 capsys: Any) -> None:
    record, db_url = signed
    assert record.signature is not None
    payload = record.signature.payload.replace(b'"iterations":15', b'"iterations":16')
    assert payload != record.signature.payload
    update(db_url, record.id, signed_payload=payload)
    text = _failed(capsys, record, record.id, "--db", db_url, "--ca", str(local_agent.pki.ca_cert))
    assert "the signature does not match the signed payload" in text


def test_a_certificate_of_another_ca_fails(signed: Tuple[Record, str], pki: Any,
                                           capsys: Any) -> None:
    """Swapped alone, the certificate does not match the signature; swapped with a payload
    re-signed by that certificate's key, the chain to the CA fails."""
    record, db_url = signed
    assert record.signature is not None
    impostor = pki.foreign_ca.issue_device("board1", ips=["127.0.0.1"], key_type=pki.key_type)
    update(db_url, record.id, agent_cert_pem=impostor.cert_pem.decode())
    ca = str(pki.ca_cert)
    _failed(capsys, record, record.id, "--db", db_url, "--ca", ca)

    doc = signing.decode_payload(record.signature.payload)
    doc["agent"]["cert_sha256"] = signing.cert_sha256(impostor.certificate)
    payload = signing.encode_payload(doc)
    signature, _ = signing.sign(impostor.private_key, payload)
    update(db_url, record.id, signed_payload=payload, signature=signature)
    text = _failed(capsys, record, record.id, "--db", db_url, "--ca", ca)
    assert "not signed by the CA given" in text


def test_verifying_against_a_foreign_ca_fails(signed: Tuple[Record, str], pki: Any,
                                              capsys: Any) -> None:
    record, db_url = signed
    text = _failed(capsys, record, record.id, "--db", db_url,
                   "--ca", str(pki.dir / "foreign" / "ca-cert.pem"))
    assert "not signed by the CA given" in text


# ---------------------------------------------------------------------- unsigned, bad input

def test_an_unsigned_record_is_reported_unsigned_not_failed(
        db_url: str, pki: Any, tmp_path: Path, capsys: Any) -> None:
    """Records from older agents (and quantize records) carry no signature."""
    with ResultsStore.open(db_url) as store:
        old = store.add(Record(kind="bench", model=ModelRef("a" * 64), metrics={"p50_ms": 1.0},
                               job_id="j1", device={"name": "old-board"}))
    assert verify_record(old, cas(pki)).status == UNSIGNED
    out = verify_cli(capsys, old.id, "--db", db_url, "--ca", str(pki.ca_cert))
    assert out.code == 0 and f"result {old.id}: unsigned" in out.out
    shown = run_cli(capsys, "results", "show", old.id, "--db", db_url, "--json").json["result"]
    assert shown["signature"] is None and shown["signed_payload"] is None


def test_verify_needs_an_id_or_a_file_and_a_ca(db_url: str, pki: Any, tmp_path: Path,
                                               capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDGETUNE_CONFIG", raising=False)
    assert verify_cli(capsys, "--db", db_url, "--ca", str(pki.ca_cert)).code == ExitStatus.USAGE
    out = verify_cli(capsys, "01J", "--db", db_url)
    assert out.code == ExitStatus.USAGE and "--ca" in out.err
    bad = tmp_path / "bad.json"
    bad.write_text('{"nothing": 1}')
    assert verify_cli(capsys, "--file", str(bad), "--ca",
                      str(pki.ca_cert)).code == ExitStatus.BAD_INPUT


# ---------------------------------------------------------------------- the schema upgrade

def test_a_database_of_revision_0001_upgrades_to_0002_and_keeps_its_records(
        db_url: str, local_agent: RunningAgent) -> None:
    from alembic import command

    assert migrate.HEAD >= "0002"
    cfg = migrate._alembic_config()
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        assert migrate.current_revision(conn) == "0001"
        conn.execute(sa.text(
            "INSERT INTO results (id, kind, created, label, model_sha256, model_name, options, "
            "device, board_state, host, metrics, job_id) VALUES ('01J0000000000000000000000A', "
            "'bench', '2026-01-02 03:04:05', 'old', :sha, 'old.onnx', '{\"iterations\": 5}', "
            "'{\"name\": \"b\"}', '{}', '{}', '{\"latency_ms\": {\"p50\": 2.5}}', 'j0')"),
            {"sha": "a" * 64})
    with engine.connect() as conn:
        assert "signature" not in {c["name"] for c in sa.inspect(conn).get_columns("results")}
    engine.dispose()

    record = bench_record(local_agent, db_url)        # opening the store upgrades it
    with ResultsStore.open(db_url) as store:
        with store.engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.HEAD
            columns = {c["name"] for c in sa.inspect(conn).get_columns("results")}
        assert {"signature", "signed_payload", "signature_algorithm",
                "agent_cert_pem"} <= columns
        old = store.get("01J0000000000000000000000A")
        assert old.label == "old" and old.metrics == {"latency_ms": {"p50": 2.5}}
        assert old.options == {"iterations": 5} and old.job_id == "j0"
        assert old.created == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
        assert old.signature is None
        assert verify_record(old, cas(local_agent.pki)).status == UNSIGNED
        assert verify_record(store.get(record.id), cas(local_agent.pki)).status == VALID
        assert store.count() == 2


# ---------------------------------------------------------------------- comparisons

COMPARE = CompareSpec(model_a_sha256="", model_b_sha256="", session=ONE, rounds=2, warmup=2,
                      iterations=15, return_samples=True)


@pytest.fixture
def compared(local_agent: RunningAgent, db_url: str, tmp_path: Path) -> Tuple[Record, Record, str]:
    """A comparison (with a dataset, raw samples kept) of the digits model against a copy of it
    with another sha256, through BoardSession; its two stored records, A's and B's."""
    import onnx

    copy = onnx.load(str(DIGITS_MODEL))
    copy.doc_string = "a copy with another sha256"
    model_b = tmp_path / "digits_copy.onnx"
    onnx.save(copy, str(model_b))
    with ResultsStore.open(db_url) as store:
        recorder = StoreRecorder(store)
        client = AgentClient(local_agent.address, local_agent.pki.host.identity)
        with BoardSession(client, "board1", recorder=recorder) as session:
            run = session.compare(DIGITS_MODEL, model_b, COMPARE, dataset=DIGITS_TEST)
        assert run.signed is not None
        a, b = recorder.comparisons[("board1", run.job_id)]
        return store.get(a.id), store.get(b.id), db_url


def test_a_comparisons_two_records_are_signed_and_verify(
        compared: Tuple[Record, Record, str], local_agent: RunningAgent, capsys: Any) -> None:
    a, b, db_url = compared
    assert a.signature is not None and a.signature == b.signature   # one job, one signature
    assert a.samples_ms and b.samples_ms and "top1" in a.metrics
    for record in (a, b):
        verdict = verify_record(record, cas(local_agent.pki))
        assert verdict.status == VALID and verdict.agent == "board1", verdict.problems
    assert verify_record(a, cas(local_agent.pki)).unsigned_fields == ()
    assert verify_record(b, cas(local_agent.pki)).unsigned_fields == (
        "metrics.compare.change.size_ratio",)                # from the local files' sizes
    out = verify_cli(capsys, b.id, "--db", db_url, "--ca", str(local_agent.pki.ca_cert))
    assert out.code == 0 and f"result {b.id}: valid" in out.out


def test_an_exported_comparison_verifies_with_only_the_ca(
        compared: Tuple[Record, Record, str], local_agent: RunningAgent, tmp_path: Path,
        capsys: Any) -> None:
    a, b, db_url = compared
    exported = tmp_path / "elsewhere" / "export.json"
    exported.parent.mkdir()
    assert run_cli(capsys, "results", "export", "--format", "json", "--db", db_url,
                   "-o", str(exported)).code == 0
    ca = exported.parent / "ca-cert.pem"
    shutil.copy(local_agent.pki.ca_cert, ca)
    doc = verify_cli(capsys, "--file", str(exported), "--ca", str(ca), "--json").json
    assert doc["ok"] and doc["verified"] == 2 and doc["failed"] == doc["unsigned"] == 0
    assert {r["id"] for r in doc["results"]} == {a.id, b.id}


@pytest.mark.parametrize("which", ["a", "b"])
def test_a_comparison_records_metric_changed_fails_naming_the_field(
        compared: Tuple[Record, Record, str], local_agent: RunningAgent, capsys: Any,
        which: str) -> None:
    a, b, db_url = compared
    record = a if which == "a" else b
    metrics = json.loads(json.dumps(dict(record.metrics)))
    metrics["latency_ms"]["p50"] /= 2
    metrics["rounds"][1]["throughput_ips"] *= 2
    update(db_url, record.id, metrics=metrics)
    text = _failed(capsys, record, record.id, "--db", db_url,
                   "--ca", str(local_agent.pki.ca_cert))
    assert "field metrics.latency_ms.p50" in text and "field metrics.rounds" in text
    other = b if which == "a" else a
    assert verify_record(other, cas(local_agent.pki)).status == VALID


def test_a_changed_comparison_change_or_sample_fails(
        compared: Tuple[Record, Record, str], local_agent: RunningAgent) -> None:
    a, b, _ = compared
    metrics = json.loads(json.dumps(dict(b.metrics)))
    metrics["compare"]["change"]["latency_p50_ratio"] = 0.5
    metrics["compare"]["verdict"] = "B is 0.50x A"
    verdict = verify_record(dataclasses.replace(b, metrics=metrics), cas(local_agent.pki))
    assert verdict.status == INVALID
    assert any("field metrics.compare.change.latency_p50_ratio" in p for p in verdict.problems)
    assert any("field metrics.compare.verdict" in p for p in verdict.problems)
    assert a.samples_ms is not None
    changed = dataclasses.replace(a, samples_ms=a.samples_ms[:-1] + (0.001,))
    verdict = verify_record(changed, cas(local_agent.pki))
    assert verdict.status == INVALID and "field samples_ms" in verdict.problems[0]


def test_a_comparison_records_model_sha_changed_fails(
        compared: Tuple[Record, Record, str], local_agent: RunningAgent, tmp_path: Path,
        capsys: Any) -> None:
    a, b, db_url = compared
    exported = tmp_path / "export.json"
    run_cli(capsys, "results", "export", "--format", "json", "--db", db_url, "-o", str(exported))
    doc = json.loads(exported.read_text())
    entry = next(r for r in doc["results"] if r["id"] == a.id)
    entry["model"]["sha256"] = b.model.sha256          # A's numbers claimed for model B
    exported.write_text(json.dumps(doc))
    text = _failed(capsys, a, "--file", str(exported), "--ca", str(local_agent.pki.ca_cert))
    assert "field model.sha256 (model A)" in text and f"result {b.id}: valid" in text
