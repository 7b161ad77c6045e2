import torch

from sparse_transformer.attention import check_connectivity, layer_reach, layer_heads, stack_masks
from sparse_transformer.attention.connectivity import compose

N, L, C = 64, 8, 2


def test_strided_interleaved_connects_in_two_layers_either_order():
    rep = check_connectivity(stack_masks("strided", N, L, 3, n_head=2, integration="interleaved"))
    assert rep.ok and rep.stack_ok and len(rep.windows) == 2  # (local, stride) and (stride, local)


def test_strided_merged_and_multihead_connect():
    for integ in ("merged", "multihead"):
        rep = check_connectivity(stack_masks("strided", N, L, 2, n_head=2, integration=integ))
        assert rep.ok, (integ, str(rep))


def test_fixed_connects_only_with_block_before_summary():
    rep = check_connectivity(stack_masks("fixed", N, L, 3, n_head=2, summary=C, integration="interleaved"))
    # window 0 = (block, summary) connects; window 1 = (summary, block) cannot: a non-summary key in an
    # earlier block is seen by nobody in the query's block after one summary layer
    assert rep.windows[0][1] and not rep.windows[1][1]
    assert not rep.ok and rep.stack_ok
    i, j = rep.failures[0]
    assert j // L < i // L and j % L < L - C


def test_fixed_merged_with_summary_heads_connects():
    for s in (1, 2, 4):
        rep = check_connectivity(stack_masks("fixed", N, L, 2, n_head=4, summary=C, summary_heads=s, integration="merged"))
        assert rep.ok, (s, str(rep))


def test_openai_cifar_cycle():
    layout = ["stride", "local", "local", "local"]
    rep = check_connectivity(stack_masks("strided", N, L, 5, n_head=2, layout=layout))
    assert [w[1] for w in rep.windows] == [True, False, False, True]  # (s,l) (l,l) (l,l) (l,s)
    assert rep.stack_ok


def test_a_pattern_that_fails():
    rep = check_connectivity(stack_masks("local", N, L, 2))
    assert not rep.ok and not rep.stack_ok
    assert (N - 1, 0) in rep.failures or rep.failures  # a distant key is unreachable
    far = [(i, j) for i, j in rep.failures if i - j >= 2 * L - 1]
    assert far and all(i - j >= 2 * L - 1 for i, j in rep.failures)


def test_residual_path_counts_and_empty_summary_rows():
    heads = layer_heads("summary", 1, L, summary=C)
    reach = layer_reach(heads, N)
    assert reach.diagonal().all()  # I: the residual path
    assert reach[: L - C].sum() == L - C  # first-block queries before any summary cell: only themselves
    two = compose([reach, reach])
    assert two.dtype == torch.bool
