"""Rules the test suite keeps about itself."""

import re
from pathlib import Path

TESTS = Path(__file__).parent


def test_no_wall_time_bound_in_the_tests():
    # A timeout written as a number is a wall-time assertion in disguise: on a loaded machine a
    # correct run fails. Every subprocess takes conftest.HANG_GUARD_S, far above measured times.
    literal = re.compile(r"timeout\s*=\s*[0-9]")
    found = [f"{path.name}:{n}" for path in sorted(TESTS.glob("*.py")) for n, line in enumerate(path.read_text().splitlines(), 1)
             if literal.search(line)]
    assert not found, f"literal timeouts (use conftest.HANG_GUARD_S): {found}"
