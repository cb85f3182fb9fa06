"""Prints how many cases each fuzzer ran at the end of the test session (counted as hypothesis ran them)."""
from tests.fuzz.cases import COUNTS, summary


def pytest_terminal_summary(terminalreporter):
    if COUNTS:
        terminalreporter.write_line(f"fuzz: {summary()} ({sum(COUNTS.values())} in all)")
