"""pytest plugin (`-p tests.support.kind_report`): after collection, print each test's kind markers, one
line per test, for tests/seams/test_test_kinds.py."""

from __future__ import annotations

KINDS = ("unit", "integration", "rehearsal", "gpu")


def pytest_collection_finish(session):
    for item in session.items:
        kinds = [kind for kind in KINDS if item.get_closest_marker(kind)]
        print(f"KINDS {item.nodeid} {','.join(kinds) or '-'}")
