"""What the config check cannot know without torch (training/preflight.py); the command-line
refusals it gives are tested in tests/cli/test_train.py."""

from omegaconf import OmegaConf

from sparse_transformer.attention.connectivity import stack_unreachable
from sparse_transformer.training.preflight import _stack


def test_the_stack_check_counts_unreachable_pairs_and_names_a_fix():
    """What the refusal rests on: the stack's reach at any depth (the multihead case the count
    check refuses first really leaves pairs unreachable; summary_heads=1 connects)."""
    a = OmegaConf.create(dict(pattern="fixed", stride=8, summary=2, summary_heads=2, integration="multihead", layout=None))
    assert int(stack_unreachable(_stack(a, 2, 2, 24)).sum()) > 0
    assert int(stack_unreachable(_stack(a, 2, 2, 24, summary_heads=1)).sum()) == 0
    strided = OmegaConf.create(dict(pattern="strided", stride=8, summary=None, summary_heads=1, integration="interleaved", layout=None))
    assert int(stack_unreachable(_stack(strided, 2, 2, 24)).sum()) == 0
