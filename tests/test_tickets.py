"""The ticket-office scenario of ``corral demo``, kept as a test: 50 buyers, 10
tickets, chaos on (random SIGKILLs, some of them of the lock's holder)."""

from __future__ import annotations

import argparse

from corral._tools._demo import Report, all_scenarios


def test_ticket_office_under_chaos() -> None:
    scenario = all_scenarios()["tickets"]
    ns = argparse.Namespace(buyers=50, tickets=10, chaos=True, seed=None)
    report = Report()
    scenario.run(ns, report)
    failed = [f"{c.name} ({c.detail})" for c in report.checks if not c.passed]
    assert not failed
    names = [c.name for c in report.checks]
    assert any("no ticket oversold" in n for n in names)
    assert any("multiprocessing.Lock" in n for n in names)


def test_ticket_office_defaults() -> None:
    parser = argparse.ArgumentParser()
    scenario = all_scenarios()["tickets"]
    assert scenario.add_arguments is not None
    scenario.add_arguments(parser)
    ns = parser.parse_args([])
    assert ns.chaos is True
    assert parser.parse_args(["--no-chaos", "--buyers", "5"]).chaos is False
