"""analysis.examples: query positions worth drawing and rows for statistics."""

from sparse_transformer import analysis as A


def test_default_queries_and_stat_rows():
    q = A.default_queries("image", (10, 12, 3), 3)
    assert all(0 <= p < 360 and p % 3 == 0 for p in q)
    q = A.default_queries("text", (8, 16), 2)
    assert q[-1] == 127 and all(0 <= p < 128 for p in q)
    rows = A.stat_rows(1000, 64)
    assert len(rows) <= 64 and rows[0] == 500 and rows[-1] < 1000
