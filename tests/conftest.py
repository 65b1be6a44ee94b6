"""Shared pytest hooks."""

import pytest


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Expose each phase's report on the item (rep_setup, rep_call) for fixtures that react to failures.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
