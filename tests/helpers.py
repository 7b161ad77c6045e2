import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Decoding runs many tiny operations: intra-op threads only add synchronisation (and, on a shared
    machine, contention that made these tests 10x slower), so this module runs on one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Norm-wise relative error ||x - ref|| / ||ref||, in float64 (absolute error where ref is 0)."""
    x, ref = x.detach().double(), ref.detach().double()
    denom = ref.norm()
    return float((x - ref).norm() / (denom if denom > 0 else 1.0))


def brute_mask(pattern: str, n: int, l: int, c: int | None = None, slice_: int = 0) -> torch.Tensor:
    """The design's definitions, written as plain Python loops (the test oracle for masks)."""
    m = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(i + 1):
            if pattern == "dense":
                ok = True
            elif pattern == "local":
                ok = 0 <= i - j < l
            elif pattern == "stride":
                ok = (i - j) % l == 0
            elif pattern == "block":
                ok = j // l == i // l
            elif pattern == "summary":
                ok = l - (slice_ + 1) * c <= j % l < l - slice_ * c
            else:
                raise ValueError(pattern)
            m[i, j] = ok
    return m
