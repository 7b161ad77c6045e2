import pytest

from sparse_transformer.config import ConfigError, load_config


@pytest.mark.parametrize("args,message", [
    (["data.modality=image"], "data.shape=None must be [H, W, C] with C in 1, 3, 4 for data.modality=image"),
    (["data.modality=image", "data.shape=[4,4,2]", "data.seq_len=32"], "must be [H, W, C] with C in 1, 3, 4"),
    (["data.format=zip"], "data.format=zip is unknown; valid: arrow, raw"),
    (["data.synth=piano"], "data.synth=piano is unknown; valid: auto, fluidsynth, simple"),
    (["data.sample_rate=100"], "data.sample_rate=100 must be >= 1000"),
    (["data.val_size=0"], "data.val_size=0 must be >= 1 or null"),
    (["data.max_bytes=0"], "data.max_bytes=0 must be >= 1 or null"),
])
def test_bad_data_values_raise_one_line(args, message):
    with pytest.raises(ConfigError) as e:
        load_config(args)
    assert message in str(e.value) and "\n" not in str(e.value)
