"""The run book's row updates from many boards' threads at once (host/fleet/runbook.py): every
update lands, they share transactions (group commit) instead of queueing one transaction each,
and a write that fails is raised in every thread whose update it held."""

from __future__ import annotations

import threading
from typing import Any, List

import pytest

from edgetune.host.errors import EdgetuneError
from edgetune.host.fleet import runbook as rb
from edgetune.host.fleet.runspec import FileRef, FleetRunSpec
from edgetune.protos.messages import BenchmarkSpec

SHA = "a" * 64
RUN = "01JRUN0000000000000000000B"
BOARDS = [f"b{i:02d}" for i in range(24)]


def _book(store: Any) -> rb.RunBook:
    book = rb.RunBook(store)
    spec = FleetRunSpec(kind="benchmark", models=(FileRef(SHA, SHA),),
                        template=BenchmarkSpec(model_sha256=""))
    book.create(RUN, spec, "all", BOARDS, {"hostname": "h"})
    return book


def _all_at_once(book: rb.RunBook, **values: Any) -> List[BaseException]:
    start = threading.Barrier(len(BOARDS))
    errors: List[BaseException] = []

    def one(board: str) -> None:
        start.wait(10)
        try:
            book.update(RUN, board, SHA, job_id=f"job-{board}", **values)
        except BaseException as exc:  # noqa: BLE001 - collected for the test
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(b,)) for b in BOARDS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def test_updates_at_once_all_land_in_fewer_transactions(db_url: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetune.host.results.store import ResultsStore

    with ResultsStore.open(db_url) as store:
        book = _book(store)
        transactions: List[int] = []
        real = rb.RunBook._write

        def counting(self: Any, statements: Any, rows: Any = ()) -> None:
            transactions.append(len(statements))
            real(self, statements, rows)

        monkeypatch.setattr(rb.RunBook, "_write", counting)
        assert _all_at_once(book, state=rb.SUBMITTED) == []
        rows = {r.device: r for r in book.rows(RUN)}
        assert {d: (r.state, r.job_id) for d, r in rows.items()} == \
            {b: ("submitted", f"job-{b}") for b in BOARDS}
        assert sum(transactions) == len(BOARDS)
        assert len(transactions) < len(BOARDS), transactions     # some were shared


def test_a_failed_write_is_raised_in_each_thread_it_held(db_url: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetune.host.results.store import ResultsStore

    with ResultsStore.open(db_url) as store:
        book = _book(store)

        def failing(self: Any, statements: Any, rows: Any = ()) -> None:
            raise EdgetuneError("the results database is gone")

        monkeypatch.setattr(rb.RunBook, "_write", failing)
        errors = _all_at_once(book, state=rb.DONE)
        assert len(errors) == len(BOARDS)
        assert all(str(e) == "the results database is gone" for e in errors)
        monkeypatch.undo()
        book.update(RUN, "b00", SHA, state=rb.DONE)                # the book still works
        assert {r.device: r.state for r in book.rows(RUN)}["b00"] == "done"
