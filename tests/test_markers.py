"""The test tiers hold: a test that starts a process without the `slow` marker fails (so
``make test-fast`` stays quick), and the same test with the marker passes."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INNER = """
import subprocess
import sys

import pytest

from tests.conftest import slow_marker_on_process_tests  # noqa: F401 - the fixture under test


def test_unmarked():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


@pytest.mark.slow
def test_marked():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_quick_command_is_allowed():
    subprocess.run(["git", "--version"], check=True, capture_output=True)
"""


@pytest.mark.slow  # the inner tests start a process, by design
def test_a_process_without_the_slow_marker_fails(pytester):
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n    gpu: gpu\n")
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)  # the unmarked test runs, then its teardown fails
    result.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_unmarked*", "*this test starts a process*mark it @pytest.mark.slow*"]
    )
