"""The endpoint circuit: opened by an unreachable receiver, one probe at a time, closed by any answer."""

from __future__ import annotations

from listener.core.circuit import Circuit


def test_the_first_unreachable_request_opens_it_and_schedules_a_probe() -> None:
    circuit = Circuit(lambda: 1.0, initial=1.0, cap=30.0)
    assert not circuit.open
    assert circuit.unreachable(100.0, probe=False) is True
    assert circuit.open
    assert not circuit.may_probe(100.5)
    assert circuit.may_probe(101.0)


def test_requests_sent_before_it_opened_do_not_push_the_probe_back() -> None:
    circuit = Circuit(lambda: 1.0, initial=1.0, cap=30.0)
    circuit.unreachable(100.0, probe=False)
    assert circuit.unreachable(100.2, probe=False) is False
    assert circuit.probe_at == 101.0


def test_failed_probes_wait_longer_up_to_the_cap() -> None:
    circuit = Circuit(lambda: 1.0, initial=1.0, cap=4.0)
    circuit.unreachable(0.0, probe=False)
    waits = []
    for now in (10.0, 20.0, 30.0, 40.0):
        circuit.unreachable(now, probe=True)
        waits.append(circuit.probe_at - now)
    assert waits == [2.0, 4.0, 4.0, 4.0]


def test_any_answer_closes_it_and_says_for_how_long_it_was_open() -> None:
    circuit = Circuit(lambda: 0.5)
    circuit.unreachable(50.0, probe=False)
    assert circuit.reached() == 50.0
    assert not circuit.open
    assert circuit.reached() is None


def test_a_row_may_be_sent_when_due_but_while_open_not_before_the_probe_time() -> None:
    circuit = Circuit(lambda: 1.0, initial=1.0, cap=30.0)
    assert circuit.next_send_at(105.0) == 105.0  # closed: when due
    circuit.unreachable(100.0, probe=False)  # the probe at 101
    assert circuit.next_send_at(100.5) == 101.0  # due before the probe: at the probe
    assert circuit.next_send_at(300.0) == 300.0  # due after it: no need to wake at the probe
