"""data/windows.py: training windows, and the one evaluation-window class (ContextWindows; C = 0 is validation's)."""

import math

import numpy as np
import pytest
import torch

from sparse_transformer.data.store import DataError
from sparse_transformer.data.windows import ContextWindows, RandomWindows
from tests.data.helpers import CountingStream as Stream


@pytest.mark.parametrize("length,n,C", [(1000, 64, 48), (1000, 64, 0), (64, 64, 10), (130, 64, 63), (257, 64, 16),
                                        (256, 64, 0), (65, 64, 0)])
def test_every_token_is_scored_once_with_at_least_C_tokens_before_it(length, n, C):
    ds = ContextWindows(Stream(length), n, C)
    seen = np.zeros(length, dtype=int)
    for k in range(len(ds)):
        x, mask = ds[k]
        start = int(ds.starts[k])
        assert x.dtype == torch.int64 and torch.equal(x, torch.as_tensor(np.arange(start, start + n) % 251))
        pos = start + mask.nonzero()[:, 0].numpy()
        seen[pos] += 1
        assert ((pos - start >= C) | (pos < C)).all()  # only the split's first C tokens see less
    assert (seen == 1).all()
    if C == 0:  # validation's windows: disjoint, the last moved back to the split's end
        assert len(ds) == math.ceil(length / n) and list(ds.starts[:-1]) == list(range(0, n * (len(ds) - 1), n))


def test_a_limit_and_the_whole_split_again():
    ds = ContextWindows(Stream(1000), 64, limit=3)
    assert len(ds) == 3 and ds.count == 3
    with pytest.raises(IndexError):
        ds[3]
    ds.count = math.ceil(1000 / 64)  # what evaluation does to score the whole validation split
    assert len(ds) == 16 and int(ds[15][1].sum()) == 1000 - 15 * 64


@pytest.mark.parametrize("length,n,C,message", [
    (1000, 64, 64, "eval.min_context=64 must be in 0..63"),
    (1000, 64, -1, "eval.min_context=-1 must be in 0..63"),
    (10, 64, 0, "an evaluation split has 10 tokens, fewer than data.seq_len=64"),
])
def test_impossible_windows_are_one_line(length, n, C, message):
    with pytest.raises(DataError, match=message):
        ContextWindows(Stream(length), n, C)


def test_training_windows_stay_inside_the_split_and_repeat_per_seed():
    a = RandomWindows(Stream(500), 64, 50, seed=1)
    b = RandomWindows(Stream(500), 64, 50, seed=1)
    assert [a.offset(i) for i in range(50)] == [b.offset(i) for i in range(50)]
    assert all(0 <= a.offset(i) <= 500 - 64 for i in range(50)) and a[0][1].all()
    with pytest.raises(DataError, match="fewer than data.seq_len=64"):
        RandomWindows(Stream(10), 64, 1, seed=0)
