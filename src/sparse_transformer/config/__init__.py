"""Configuration: the schema (schema.py: a dataclass per section, a docstring and the valid values
beside each field), the checks between keys (checks.py) and the merge of schema, YAML files and
command line (load.py). ``from sparse_transformer.config import ...`` keeps working for every name
below.

Imports are lazy so that ``config.schema`` (the network's ModelConfig and AttentionConfig) imports
neither omegaconf nor torch: model.py and the benchmarks that build a network need torch alone.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["check", "check_eval", "check_fields", "check_resume", "check_sample"], ".checks"),
    **dict.fromkeys(["CONF_DIR", "EXP_NAME", "ROOT", "_check_keys", "_leaf_keys", "_omegaconf_error",
                     "experiment_path", "experiments", "help_text", "load_config", "main_config", "parse_args",
                     "to_yaml"], ".load"),
    **dict.fromkeys(["COMPILE_MODES", "AttentionConfig", "AttentionMapsConfig", "CallbacksConfig", "Config",
                     "ConfigError", "DataConfig", "EvalConfig", "LoggerConfig", "ModelConfig", "OptimConfig",
                     "SampleConfig", "SamplesConfig", "ThroughputConfig", "TrainerConfig", "default_logger",
                     "field_docs", "section"], ".schema"),
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
