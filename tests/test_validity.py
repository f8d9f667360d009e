"""docs/validity.md: every guard row names a test that exists."""

from __future__ import annotations

import re

from .conftest import REPO, find_test_file


def test_every_row_of_the_validity_doc_names_an_existing_test():
    doc = (REPO / "docs" / "validity.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    body = [r for r in rows if not r.startswith("| guard")]
    assert body, "docs/validity.md lists no guards"
    for row in body:
        refs = re.findall(r"`(test_\w+\.py)::(test_\w+)", row)
        assert refs, f"row without a test: {row}"
        for file, name in refs:
            assert f"def {name}(" in find_test_file(file).read_text(), (file, name)
