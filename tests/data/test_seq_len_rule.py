"""The rule the text and audio windows rely on: a stream's shape is [seq_len], which the model lays
out in rows of attention.stride, so data.seq_len must be a multiple of attention.stride (every
pattern: the sparse ones need whole rows, dense needs them for its factorized positions). Images
give data.shape instead, whose product must be data.seq_len. (Issue 16, item 15: the whole suite
passed with this check removed; this test fails without it.)"""

import pytest

from sparse_transformer.config import ConfigError, load_config


@pytest.mark.parametrize("pattern", ["dense", "strided", "fixed", "local", "stride", "block", "summary"])
@pytest.mark.parametrize("seq_len,stride", [(100, 32), (64, 48), (129, 8), (8, 16)])
def test_seq_len_must_be_a_multiple_of_the_stride(pattern, seq_len, stride):
    with pytest.raises(ConfigError) as e:
        load_config([f"attention.pattern={pattern}", "attention.summary=4", f"data.seq_len={seq_len}",
                     f"attention.stride={stride}"])
    msg = str(e.value)
    assert msg.startswith(f"data.seq_len={seq_len} must be a multiple of attention.stride={stride}") and "\n" not in msg
    low, high = max(stride, seq_len // stride * stride), (seq_len // stride + 1) * stride
    assert msg.endswith(f": e.g. {low} or {high}")  # what would be valid


@pytest.mark.parametrize("pattern", ["dense", "strided", "fixed"])
def test_multiples_of_the_stride_are_accepted(pattern):
    cfg, _ = load_config([f"attention.pattern={pattern}", "attention.summary=4", "data.seq_len=96", "attention.stride=32"])
    assert cfg.data.seq_len % cfg.attention.stride == 0


def test_images_are_checked_by_their_shape_instead():
    load_config(["data.modality=image", "data.shape=[4,5,3]", "data.seq_len=60", "attention.stride=8"])  # 60: not a multiple of 8
    with pytest.raises(ConfigError, match=r"data.shape=\[4, 5, 3\] has 60 positions but data.seq_len=64"):
        load_config(["data.modality=image", "data.shape=[4,5,3]", "data.seq_len=64", "attention.stride=8"])
