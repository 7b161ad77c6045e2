"""The schema: docstrings, Literal choices refused by OmegaConf itself, the rule beside each field."""

import typing

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from sparse_transformer.attention.constants import BACKENDS, INTEGRATIONS
from sparse_transformer.config import AttentionConfig, Config, ConfigError, field_docs, load_config, section
from sparse_transformer.config.schema import leaves

LITERALS = {k: typing.get_args(leaf.type) for k, leaf in leaves().items()
            if typing.get_origin(leaf.type) is typing.Literal}
FLOATS = [k for k, leaf in leaves().items() if float in (leaf.type, *typing.get_args(leaf.type)) and not leaf.is_list]


def _one_line_error(args, validate=True) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(args, validate=validate)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_every_field_has_a_docstring_and_required_keys_exist():
    docs = field_docs()
    assert all(docs.values()), [k for k, v in docs.items() if not v]
    for key in ("seed", "model.n_layer", "model.n_head", "model.d_model", "model.ffn_mult", "model.qk_ratio",
                "model.dropout", "model.recompute", "attention.pattern", "attention.stride", "attention.summary",
                "attention.summary_heads", "attention.integration", "attention.layout", "attention.backend",
                "data.seq_len", "data.batch_size", "data.path", "optim.lr", "optim.warmup_steps",
                "optim.weight_decay", "optim.grad_clip", "trainer.max_steps", "trainer.max_epochs",
                "trainer.precision", "trainer.devices", "logger.kind"):
        assert key in docs, key


# ------------------------------------------------------------------------------------------------
# Choices: Literal fields, refused by OmegaConf before any check of ours
# ------------------------------------------------------------------------------------------------
def test_the_choices_are_literals():
    assert set(LITERALS) >= {"model.compile_mode", "attention.integration", "attention.backend", "data.modality",
                             "data.format", "data.synth", "trainer.accelerator", "trainer.strategy", "logger.kind",
                             "sample.cache", "sample.backend", "eval.split", "eval.backend"}
    assert LITERALS["attention.backend"] == BACKENDS and LITERALS["attention.integration"] == INTEGRATIONS


@pytest.mark.parametrize("key", sorted(LITERALS))
def test_omegaconf_refuses_a_value_outside_a_literal_and_the_message_is_one_line(key):
    with pytest.raises(ValidationError):
        OmegaConf.update(OmegaConf.structured(Config), key, "nonsense")
    msg = _one_line_error([f"{key}=nonsense"], validate=False)  # the merge refuses it: no check of ours ran
    assert msg == f"{key}=nonsense is unknown; valid: {', '.join(LITERALS[key])}"


# ------------------------------------------------------------------------------------------------
# Rules beside the fields
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", FLOATS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_every_float_key_must_be_finite(key, value):
    assert _one_line_error([f"{key}={value}"]).startswith(f"{key}={float(value)} must be a finite number")


@pytest.mark.parametrize("args,message", [
    (["optim.lr=inf"], "optim.lr=inf must be a finite number > 0"),
    (["model.dropout=nan"], "model.dropout=nan must be a finite number in [0, 1)"),
    (["optim.beta1=1"], "optim.beta1=1.0 must be in [0, 1)"),
    (["optim.beta2=-0.1"], "optim.beta2=-0.1 must be in [0, 1)"),
    (["optim.beta2=0.999"], None),
    (["data.eval_batch_size=0"], "data.eval_batch_size=0 must be >= 1 or null"),
    (["data.val_windows=0"], "data.val_windows=0 must be >= 1 or null"),
    (["trainer.val_check_interval=0"], "trainer.val_check_interval=0.0 must be a fraction of an epoch in (0, 1] or a "
                                        "whole number of steps > 1 or null"),
    (["trainer.val_check_interval=2.5"], "trainer.val_check_interval=2.5 must be a fraction of an epoch in (0, 1] or a "
                                          "whole number of steps > 1 or null"),
    (["trainer.val_check_interval=0.5"], None),
    (["trainer.val_check_interval=200"], None),
    (["trainer.limit_val_batches=-1"], "trainer.limit_val_batches=-1.0 must be a fraction in [0, 1] or a whole number of "
                                       "batches (0: no validation) or null"),
    (["trainer.limit_val_batches=1.5"], "trainer.limit_val_batches=1.5 must be a fraction in [0, 1] or a whole number of "
                                          "batches (0: no validation) or null"),
    (["trainer.limit_val_batches=8"], None),
    (["trainer.max_time=banana"], "trainer.max_time=banana is not a duration; valid: DD:HH:MM:SS, e.g. 00:12:00:00 for 12 hours or null"),
    (["trainer.max_time=00:05"], "trainer.max_time=00:05 is not a duration; valid: DD:HH:MM:SS, e.g. 00:12:00:00 for 12 hours or null"),
    (["trainer.max_time=00:00:00:00"], "trainer.max_time=00:00:00:00 is not a duration; valid: DD:HH:MM:SS, e.g. 00:12:00:00 for 12 "
                                       "hours or null"),
    (["trainer.max_time=00:12:00:00"], None),
    (["trainer.keep_checkpoints=0"], "trainer.keep_checkpoints=0 must be >= 1 (1: last.ckpt only)"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 must be -1 (no limit) or >= 1 or null"),
    (["trainer.max_epochs=-1"], None),
    (["model.d_model=0"], "model.d_model=0 must be >= 1"),
    (["model.n_head=0"], "model.n_head=0 must be >= 1"),
    (["model.n_layer=0"], "model.n_layer=0 must be >= 1"),
    (["model.qk_ratio=0"], "model.qk_ratio=0.0 must be in (0, 4]"),
    (["model.vocab_size=1"], "model.vocab_size=1 must be >= 256 (every modality's tokens are bytes, 0..255)"),
    (["model.vocab_size=10"], "model.vocab_size=10 must be >= 256 (every modality's tokens are bytes, 0..255)"),
    (["model.vocab_size=512"], None),
    (["attention.summary=0"], "attention.summary=0 must be >= 1 or null"),
    (["attention.summary_heads=0"], "attention.summary_heads=0 must be >= 1"),
    (["data.splits=[0.5,0.6,0.1]"], "data.splits=[0.5, 0.6, 0.1] must be three fractions (train, val, test) summing to at most 1"),
    (["data.splits=[nan,0.05,0.05]"], "data.splits=[nan, 0.05, 0.05] must be three fractions (train, val, test) summing to at most 1"),
    (["sample.device=tpu"], "sample.device=tpu is unknown; valid: auto, cpu, cuda, cuda:<index>"),
    (["eval.device=cuda:1"], None),
])
def test_the_rule_beside_a_field_names_the_key_and_what_is_valid(args, message):
    if message is None:
        load_config(args)
    else:
        assert _one_line_error(args) == message


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
    assert message in _one_line_error(args)


def test_a_section_of_an_older_config_takes_the_defaults_it_lacks():
    a = section(AttentionConfig, OmegaConf.create({"pattern": "fixed", "summary": 4, "layout": ["block", "summary"]}))
    assert a == AttentionConfig(pattern="fixed", summary=4, layout=["block", "summary"]) and type(a.layout) is list
