"""Configuration: a dataclass schema (a docstring per field), merged with OmegaConf in this order:

    schema defaults -> conf/config.yaml -> conf/exp/<exp>.yaml -> command line

The command line takes ``key=value`` (what W&B agents pass through ``${args_no_hyphens}``) and
``--key=value``; ``exp=<name>`` picks the experiment; ``--cfg`` prints the resolved YAML and exits 0.
Everything here is checked before torch or Lightning is imported, so a bad command line fails in
about a second, with one line naming the key and what would be valid, and exit code 2.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib
import importlib.util
import inspect
import os
import re
import sys
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf  # noqa: F401
from omegaconf.errors import OmegaConfBaseException

from .attention.constants import BACKENDS, INTEGRATIONS, PAIRS, PRIMITIVES

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = Path(os.environ.get("SPARSE_TRANSFORMER_CONF", ROOT / "conf"))

PRECISIONS = ("auto", "32", "32-true", "64", "64-true", "bf16-mixed", "16-mixed", "bf16-true")
LOGGERS = ("wandb", "csv", "none")
MODALITIES = ("text", "image", "audio")
DATA_FORMATS = ("arrow", "raw")
SYNTHS = ("auto", "fluidsynth", "simple")
STRATEGIES = ("auto", "ddp", "fsdp", "ddp_spawn")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
COMPILE_MODES = ("blocks", "model", "cudagraphs")  # model.COMPILE_MODES, here without importing torch


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line naming the key and what is valid."""


@dataclass
class ModelConfig:
    n_layer: int = 4
    """Number of residual blocks (attention + feed-forward)."""
    n_head: int = 4
    """Attention heads per block; d_model and d_model*qk_ratio must be multiples of it."""
    d_model: int = 128
    """Width of the residual stream."""
    ffn_mult: float = 4.0
    """Feed-forward inner width as a multiple of d_model (4; the paper's half-size layers use 2)."""
    qk_ratio: float = 1.0
    """Width of Q and K relative to d_model (the paper's half-size QK: 0.5)."""
    dropout: float = 0.0
    """Dropout at the end of each residual branch (never inside attention)."""
    emb_dropout: float = 0.0
    """Dropout on the summed embeddings (OpenAI's code; 0 for CIFAR-10)."""
    recompute: bool = False
    """Recompute attention and feed-forward in backward (activation checkpointing per block)."""
    compile: bool = False
    """torch.compile the network as model.compile_mode says (by default the whole network, forward and backward, one graph), attention included (its plans are prepared outside the graph), with static shapes: a short last batch and validation compile once more each."""
    compile_mode: str = "model"
    """With model.compile: model (the whole network one graph) | blocks (each residual block its own graph) | cudagraphs (the whole network replayed as CUDA graphs, torch.compile's reduce-overhead; GPU only)."""
    vocab_size: int = 256
    """Token vocabulary (bytes, 8-bit pixels, 8-bit mu-law audio: 256)."""


@dataclass
class AttentionConfig:
    pattern: str = "strided"
    """dense | strided | fixed | a primitive (local, stride, block, summary) | a registered name."""
    stride: int = 32
    """l: the local window / stride / block length (about sqrt(seq_len))."""
    summary: Optional[int] = None
    """c: summary cells per block for fixed/summary (the paper: 8, 16 or 32); must be <= stride."""
    summary_heads: int = 1
    """Distinct c-wide summary slices across heads (head h uses slice h % summary_heads), <= stride/summary."""
    integration: str = "interleaved"
    """How the pair's two parts share heads and blocks: interleaved | merged | multihead."""
    layout: Optional[list[str]] = None
    """An explicit cycle of patterns per residual block, e.g. [stride, local, local, local]; wins over integration."""
    backend: str = "auto"
    """auto | reference | blocked | sdpa | flex | triton (auto: sdpa for dense; on CUDA triton where its kernels apply, else flex; blocked on CPU)."""


@dataclass
class DataConfig:
    modality: str = "text"
    """text | image | audio: picks the DataModule."""
    source: str = "pydoc"
    """Where the data comes from: a built-in corpus (text: pydoc, shakespeare; audio: bach), 'local' (data.path), or a hub dataset name."""
    path: Optional[str] = None
    """Local data for source=local: a text file or zip (enwik8), idx files or an image folder, audio files, or a saved/parquet dataset folder."""
    cache_dir: str = "data"
    """Where prepared token arrays are stored (never committed)."""
    seq_len: int = 256
    """Tokens per training window (n); images: H*W*C."""
    shape: Optional[list[int]] = None
    """The data's shape for factorized positions, e.g. [64, 64, 3]; text/audio default to [seq_len/stride, stride]."""
    batch_size: int = 16
    """Windows per step per device."""
    eval_batch_size: Optional[int] = None
    """Windows per validation/test step (default: batch_size)."""
    splits: list[float] = field(default_factory=lambda: [0.9, 0.05, 0.05])
    """Fractions of a single-stream corpus used for train / val / test (contiguous, in that order)."""
    max_bytes: Optional[int] = None
    """Cap on the prepared tokens (e.g. 30000000 to carry a subset to the GPU machine): text keeps its first max_bytes, images and audio shrink every split in proportion."""
    num_workers: int = 0
    """DataLoader worker processes."""
    pin_memory: bool = False
    """Pin host memory for faster copies to the GPU."""
    persistent_workers: bool = False
    """Keep workers alive between epochs (needs num_workers > 0)."""
    streaming: bool = False
    """Stream a hub dataset (IterableDataset sharded per rank) instead of preparing it on disk."""
    val_windows: Optional[int] = None
    """Evaluate on at most this many validation windows (None: the whole split)."""
    val_size: Optional[int] = None
    """Images/audio tracks held out of the train split for validation (cifar10: 2000); None: the source's validation split, else data.splits."""
    test_split: str = "test"
    """The source's split used as the test set (imagenet64: validation, the paper's 'official validation set')."""
    format: str = "arrow"
    """Prepared-data format: arrow (a datasets DatasetDict) | raw (flat uint8 files read with numpy alone, for machines without datasets)."""
    sample_rate: int = 12000
    """Audio samples per second after resampling (the paper: 12 kHz), stored as 8-bit mu-law."""
    synth: str = "auto"
    """How scores (bach) become audio: auto (fluidsynth if it and a GM soundfont are installed, else simple) | fluidsynth | simple (own additive synthesizer)."""


@dataclass
class OptimConfig:
    lr: float = 3e-4
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 5000
    """Linear warm-up steps, then cosine decay to min_lr_ratio*lr at the last step."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of lr."""
    weight_decay: float = 0.01
    """Decoupled weight decay on the linear layers' weight matrices (not biases, norms or embeddings)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: off)."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.999
    """Adam beta2 (OpenAI's code: 0.999)."""


@dataclass
class TrainerConfig:
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: use max_epochs)."""
    max_epochs: Optional[int] = None
    """Stop after this many epochs (None with max_steps=-1: 1 epoch)."""
    max_time: Optional[str] = None
    """Wall-clock limit, DD:HH:MM:SS (Lightning's max_time)."""
    precision: str = "auto"
    """auto (bf16-mixed on GPU, 32 on CPU) | 32 | bf16-mixed | 16-mixed (fp16 with Lightning's dynamic loss scaling; GPU only) | bf16-true | 64."""
    accelerator: str = "auto"
    """auto | cpu | gpu | cuda."""
    devices: Any = "auto"
    """Devices per node (an int, a list, or auto)."""
    num_nodes: int = 1
    """Nodes (multi-node through SLURM or torchrun)."""
    strategy: str = "auto"
    """auto | ddp (NCCL on GPUs, gloo on CPU) | fsdp (sharded block by block; GPU only) | ddp_spawn."""
    accumulate_grad_batches: int = 1
    """Gradient accumulation steps."""
    val_check_interval: Optional[float] = None
    """Validate every this many training steps (> 1) or this fraction of an epoch (<= 1)."""
    limit_val_batches: Optional[float] = None
    """Validate on at most this many batches (int) or fraction (float)."""
    log_every_n_steps: int = 10
    """How often to log training metrics; also how often the host reads the device (skipped-step counts, the progress bar, the ranks' SIGTERM and max_time agreement), so a larger value syncs less."""
    fast_dev_run: bool = False
    """Run one training and one validation batch, for smoke tests."""
    enable_progress_bar: bool = True
    """Show Lightning's progress bar."""
    deterministic: bool = False
    """Ask torch for deterministic algorithms."""
    checkpoint_every_n_steps: Optional[int] = 1000
    """Save checkpoints/last.ckpt every this many optimizer steps, and at the end (null: at the end only; with save_top_k=0 Lightning 2.6 saves no last.ckpt at validations or epoch ends)."""
    max_bad_steps: int = 5
    """A nan/inf training loss or gradient norm on any rank skips that optimizer step on every rank (decided on the device, counted in train/skipped_steps); this many in a row stop the run with an error naming the steps (0: never stop). The host reads the counts every log_every_n_steps steps, so the run may go on for up to that many steps past the limit."""


def default_logger() -> str:
    """wandb where it is installed (offline without an API key or network), csv otherwise."""
    return "wandb" if importlib.util.find_spec("wandb") is not None else "csv"


@dataclass
class LoggerConfig:
    kind: str = field(default_factory=default_logger)
    """wandb (the default where wandb is installed; offline without an API key or network, WANDB_MODE respected) | csv | none."""
    project: str = "sparse-transformer"
    """W&B project."""
    entity: Optional[str] = None
    """W&B entity (team or user)."""
    group: Optional[str] = None
    """W&B group."""
    tags: list[str] = field(default_factory=list)
    """W&B tags."""
    name: Optional[str] = None
    """Run name (default: the run folder's name)."""
    log_model: bool = False
    """Log checkpoints (last.ckpt at the end) as W&B model artifacts; offline runs keep them for `wandb sync`."""


@dataclass
class SamplesConfig:
    every_n_steps: int = 0
    """Generate and log samples every this many training steps (0: only at the end of training)."""
    at_end: bool = True
    """Also generate samples when training ends."""
    count: int = 4
    """Samples per round (images are laid out in a grid)."""
    length: Optional[int] = None
    """Tokens per text/audio sample (default: data.seq_len); images always fill data.shape."""
    temperature: float = 1.0
    """Softmax temperature of the sampler."""


@dataclass
class AttentionMapsConfig:
    enabled: bool = True
    """Draw attention maps for a fixed validation example at the start and end of training."""
    every_n_steps: int = 0
    """Also draw them every this many training steps (0: only at the start and end)."""
    example: int = 0
    """Index of the validation window whose attention is drawn."""
    queries: list[int] = field(default_factory=list)
    """Query positions to draw (default: three spread over the sequence, the last one included)."""
    layers: Optional[list[int]] = None
    """Residual blocks to draw (default: all, or 8 spread evenly over deeper models)."""


@dataclass
class ThroughputConfig:
    enabled: bool = True
    """Log tokens/s, FLOP/s and MFU of training (train/device/items_per_sec, train/items_per_sec, ...) once per window."""
    window: int = 20
    """Optimizer steps per measurement window: one GPU synchronisation and one logged rate per window."""
    warmup: int = 10
    """Optimizer steps left out before the first window (compilation, autotuning, CUDA graph capture)."""
    peak_flops: Optional[float] = None
    """Peak FLOP/s of one device for MFU (None: 989e12, H100/H200 dense bf16, on CUDA; no MFU on CPU)."""


@dataclass
class CallbacksConfig:
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    attention_maps: AttentionMapsConfig = field(default_factory=AttentionMapsConfig)
    throughput: ThroughputConfig = field(default_factory=ThroughputConfig)


CACHE_MODES = ("sparse", "dense", "none")
EVAL_SPLITS = ("test", "validation")


@dataclass
class SampleConfig:
    ckpt: Optional[str] = None
    """Checkpoint to sample from (ckpt=<path> on the command line)."""
    n: int = 16
    """Number of samples."""
    batch_size: int = 16
    """Samples generated together."""
    temperature: float = 1.0
    """Divide the logits by this (0: greedy, always the most likely token)."""
    top_k: int = 0
    """Sample among the k most likely tokens only (0: off)."""
    top_p: float = 1.0
    """Nucleus sampling: among the fewest most likely tokens whose probability reaches top_p (1: off)."""
    prime: float = 0.0
    """Prime each sample with this fraction of a test-split example (0.5: an image's top half, an audio clip's first half)."""
    prime_tokens: Optional[int] = None
    """Prime with this many tokens of a test-split example instead (wins over prime)."""
    prompt: Optional[str] = None
    """Text models: prime every sample with this text (UTF-8 bytes), instead of test data."""
    length: Optional[int] = None
    """Tokens per sample, prefix included (default: the model's sequence length)."""
    cache: str = "sparse"
    """sparse (each step attends only its pattern's keys) | dense (every cached key, masked) | none (recompute)."""
    backend: str = "auto"
    """Attention backend of full passes, i.e. the prefix (auto: blocked on CPU; on CUDA triton, or flex where its kernels do not apply), whatever the checkpoint trained with."""
    device: str = "auto"
    """auto (cuda if available) | cpu | cuda | cuda:<index>."""
    seed: int = 0
    """Seed of the sampling generator and of the choice of priming examples."""
    out: Optional[str] = None
    """Output folder (default: <run>/samples/<timestamp>); must not exist yet."""
    progress: bool = True
    """Show a progress bar with tokens/s."""


@dataclass
class EvalConfig:
    ckpt: Optional[str] = None
    """Checkpoint to evaluate (ckpt=<path> on the command line)."""
    split: str = "test"
    """test | validation."""
    min_context: int = 0
    """Every scored token sees at least this much context (the paper's Table 3): overlapping windows scoring only their tail (0: disjoint windows)."""
    batch_size: Optional[int] = None
    """Windows per forward pass (default: data.eval_batch_size or data.batch_size)."""
    limit: Optional[int] = None
    """Score at most this many windows (a quick check; the JSON then says complete: false)."""
    backend: str = "auto"
    """Attention backend (auto: blocked on CPU; on CUDA triton, or flex where its kernels do not apply), whatever the checkpoint trained with."""
    device: str = "auto"
    """auto (cuda if available) | cpu | cuda | cuda:<index>."""
    out: Optional[str] = None
    """JSON file to write (default: <run>/eval/<split>_bpd[_ctx<min_context>].json)."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class Config:
    exp: str = "default"
    """Experiment name: conf/exp/<exp>.yaml."""
    seed: int = 0
    """Seed for weights, data windows and dropout."""
    run_dir: Optional[str] = None
    """Run folder (default: runs/<exp>/<timestamp>, named once by rank 0)."""
    imports: list[str] = field(default_factory=list)
    """Python modules to import first (e.g. ones that register user patterns)."""
    resume: Optional[str] = None
    """Resume exactly (weights, optimiser, schedule, step, RNG, data position): 'last' (run_dir's checkpoints/last.ckpt), 'auto' (it if it exists, else start fresh: for requeued jobs) or a checkpoint path."""
    model: ModelConfig = field(default_factory=ModelConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)


# ------------------------------------------------------------------------------------------------
# Field documentation (read from the attribute docstrings above, for --help and error messages)
# ------------------------------------------------------------------------------------------------
def field_docs(cls=Config, prefix: str = "") -> dict[str, str]:
    """``{dotted key: docstring}`` for every leaf of the schema."""
    return dict(_field_docs(cls, prefix))


@functools.lru_cache(maxsize=None)  # parsing the source costs ~0.1 s a class; every load_config asks 3 times
def _field_docs(cls, prefix: str) -> dict[str, str]:
    docs: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    own = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(getattr(b, "value", None), ast.Constant):
            own[a.target.id] = str(b.value.value)
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        sub = hints[f.name] if is_dataclass(hints[f.name]) else None
        if sub is not None:
            docs.update(field_docs(sub, f"{prefix}{f.name}."))
        else:
            docs[f"{prefix}{f.name}"] = own.get(f.name, "")
    return docs


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "exp").glob("*.yaml"))


EXP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def experiment_path(name: str) -> Path:
    """``conf/exp/<name>.yaml``. ConfigError unless ``name`` is a plain file name there (letters,
    digits, ``_ . -``; no separators, no ``..``) whose file exists and resolves inside conf/exp/:
    an experiment name never reads a YAML from elsewhere, nor names a run folder outside runs/<exp>."""
    folder = CONF_DIR / "exp"
    valid = ", ".join(experiments())
    if not EXP_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"exp={name} is not an experiment name (the name of a file in conf/exp/, without .yaml: "
                          f"letters, digits, _ . -); valid: {valid}")
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"experiment exp={name} does not exist: valid: {valid}")
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ConfigError(f"exp={name}: {path} resolves outside conf/exp/ ({path.resolve()}); valid: {valid}")
    return path


# ------------------------------------------------------------------------------------------------
# Command line -> merged config
# ------------------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> tuple[str, list[str], set[str]]:
    """Split argv into (experiment, dotted overrides, flags)."""
    exp, overrides, flags = None, [], set()
    for a in argv:
        if a in ("--cfg", "--help", "-h"):
            flags.add(a.lstrip("-"))
            continue
        s = a[2:] if a.startswith("--") else a
        if "=" not in s:
            raise ConfigError(f"argument {a!r} is not key=value (e.g. model.n_layer=4) or --cfg / --help")
        key, value = s.split("=", 1)
        if value == "None":  # how a W&B agent writes a null sweep value (f"{key}={None}")
            value = "null"
        if key == "exp":
            exp = value
        else:
            overrides.append(f"{key}={value}")
    return exp or "default", overrides, flags


def _known_keys() -> dict[str, str]:
    return field_docs()


def _check_keys(cfg_keys: list[str], where: str) -> None:
    known = _known_keys()
    for key in cfg_keys:
        if key in known:
            continue
        # a parent of a known key (e.g. attention.layout is a list) or a key inside a list value
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"see --help for the {len(known)} valid keys"
        raise ConfigError(f"unknown key {key} in {where}: {hint}")


def _leaf_keys(d: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and not key.endswith(("layout", "shape", "tags", "splits", "imports", "queries", "layers")):
                out.extend(_leaf_keys(v, key + "."))
            else:
                out.append(key)
    return out


def _load_yaml(path: Path, what: str) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml syntax errors and the like
        raise ConfigError(f"{what} {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if cfg is None:
        return OmegaConf.create({})
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{what} {path} must be a mapping of keys, got a {type(cfg).__name__}")
    return cfg


def _omegaconf_error(e: OmegaConfBaseException) -> ConfigError:
    key = getattr(e, "full_key", None) or "?"
    msg = str(e).splitlines()[0]
    if "Value '" in msg and "could not be converted" in msg:
        value = msg.split("Value '")[1].split("'")[0]
        typ = msg.rsplit("to ", 1)[-1].strip()
        typ = {"Integer": "int", "Float": "float", "Boolean": "bool (true or false)", "String": "str"}.get(typ, typ)
        return ConfigError(f"{key}={value!s} is not a valid {typ}")
    return ConfigError(f"{key}: {msg}")


def load_config(argv: list[str] | None = None, *, validate: bool = True) -> tuple[DictConfig, set[str]]:
    """Merge schema -> conf/config.yaml -> conf/exp/<exp>.yaml -> argv; validate; return (cfg, flags)."""
    argv = sys.argv[1:] if argv is None else argv
    exp, overrides, flags = parse_args(argv)
    if "help" in flags:
        return OmegaConf.structured(Config), flags
    layers = [OmegaConf.structured(Config)]
    base = CONF_DIR / "config.yaml"
    if base.exists():
        y = _load_yaml(base, "config file")
        _check_keys(_leaf_keys(OmegaConf.to_container(y)), str(base))
        layers.append(y)
    exp_path = experiment_path(exp)  # inside conf/exp/ only
    y = _load_yaml(exp_path, "experiment")
    _check_keys(_leaf_keys(OmegaConf.to_container(y)), str(exp_path))
    layers.append(y)
    try:
        cli = OmegaConf.from_dotlist(overrides)
    except Exception as e:
        raise ConfigError(f"could not parse the command line: {str(e).splitlines()[0]}") from None
    _check_keys(_leaf_keys(OmegaConf.to_container(cli)), "the command line")
    layers.append(cli)
    try:
        cfg = OmegaConf.merge(*layers)
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e) from None
    cfg.exp = exp
    if validate:
        check(cfg)
    return cfg, flags


# ------------------------------------------------------------------------------------------------
# Semantic checks
# ------------------------------------------------------------------------------------------------
def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _import_user_modules(cfg: DictConfig) -> None:
    for mod in cfg.imports:
        try:
            importlib.import_module(mod)
        except Exception as e:
            raise ConfigError(f"imports: could not import {mod!r} ({type(e).__name__}: {e}); give an importable module") from None


def positional_shape(cfg: DictConfig) -> list[int]:
    """The data shape the factorized positional embeddings use."""
    if cfg.data.shape:
        return [int(x) for x in cfg.data.shape]
    n, l = cfg.data.seq_len, cfg.attention.stride
    return [n // l, l]


def check(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first invalid key and what would be valid."""
    m, a, d, o, t, lg = cfg.model, cfg.attention, cfg.data, cfg.optim, cfg.trainer, cfg.logger
    _need(m.n_layer >= 1, f"model.n_layer={m.n_layer} must be >= 1")
    _need(m.n_head >= 1, f"model.n_head={m.n_head} must be >= 1")
    _need(m.d_model >= 1 and m.d_model % m.n_head == 0, f"model.d_model={m.d_model} must be a positive multiple of model.n_head={m.n_head}")
    d_qk = round(m.d_model * m.qk_ratio)
    _need(0 < m.qk_ratio <= 4 and d_qk % m.n_head == 0 and d_qk >= m.n_head,
          f"model.qk_ratio={m.qk_ratio} must make d_model*qk_ratio a positive multiple of n_head={m.n_head} (e.g. 1.0 or 0.5)")
    _need(m.ffn_mult > 0, f"model.ffn_mult={m.ffn_mult} must be > 0 (4, or 2 for half-size)")
    for key in ("dropout", "emb_dropout"):
        _need(0 <= m[key] < 1, f"model.{key}={m[key]} must be in [0, 1)")
    _need(m.vocab_size >= 2, f"model.vocab_size={m.vocab_size} must be >= 2")
    _need(m.compile_mode in COMPILE_MODES, f"model.compile_mode={m.compile_mode} is unknown; valid: {', '.join(COMPILE_MODES)}")

    builtin = list(PRIMITIVES) + list(PAIRS)
    names = set(builtin)
    if cfg.imports or a.pattern not in names or any(x not in names for x in (a.layout or [])):
        _import_user_modules(cfg)
        from .attention.patterns import registered_patterns  # torch only for user patterns

        names |= set(registered_patterns())
    valid = ", ".join(sorted(names, key=lambda x: (x not in builtin, builtin.index(x) if x in builtin else 0, x)))
    if a.pattern not in names:
        close = difflib.get_close_matches(a.pattern, list(names), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"attention.pattern={a.pattern} is unknown{hint}; valid: {valid}")
    for x in a.layout or []:
        _need(x in names, f"attention.layout entry {x!r} is unknown; valid: {valid}")
    _need(a.stride >= 1, f"attention.stride={a.stride} must be an int >= 1 (about sqrt(seq_len))")
    fixedish = a.pattern in ("fixed", "summary") or any(x in ("fixed", "summary") for x in (a.layout or []))
    if fixedish:
        _need(a.summary is not None, "attention.summary must be set for a fixed/summary pattern: an int in 1..stride (8, 16 or 32 in the paper)")
        _need(1 <= a.summary <= a.stride, f"attention.summary={a.summary} must be in 1..attention.stride={a.stride}")
        _need(1 <= a.summary_heads <= a.stride // a.summary,
              f"attention.summary_heads={a.summary_heads} must be in 1..stride/summary={a.stride // a.summary}")
    _need(a.integration in INTEGRATIONS, f"attention.integration={a.integration} is unknown; valid: {', '.join(INTEGRATIONS)}")
    if a.integration == "multihead" and a.pattern in PAIRS and not a.layout:
        _need(m.n_head >= 2, f"attention.integration=multihead needs model.n_head >= 2, got {m.n_head}")
    _need(a.backend in BACKENDS, f"attention.backend={a.backend} is unknown; valid: {', '.join(BACKENDS)}")
    if a.backend == "sdpa":
        _need(a.pattern == "dense" and not a.layout, f"attention.backend=sdpa runs only attention.pattern=dense, got {a.pattern}; use auto")

    _need(d.modality in MODALITIES, f"data.modality={d.modality} is unknown; valid: {', '.join(MODALITIES)}")
    _need(d.seq_len >= 2, f"data.seq_len={d.seq_len} must be >= 2")
    _need(d.batch_size >= 1, f"data.batch_size={d.batch_size} must be >= 1")
    if d.shape:
        prod = 1
        for x in d.shape:
            prod *= int(x)
        _need(prod == d.seq_len, f"data.shape={list(d.shape)} has {prod} positions but data.seq_len={d.seq_len}; make them agree")
    else:
        sparse = a.pattern != "dense" or bool(a.layout)
        why = f"for pattern {a.pattern}" if sparse else "for the factorized positions (seq_len/stride, stride)"
        _need(d.seq_len % a.stride == 0,
              f"data.seq_len={d.seq_len} must be a multiple of attention.stride={a.stride} {why}: "
              f"e.g. {max(a.stride, d.seq_len // a.stride * a.stride)} or {(d.seq_len // a.stride + 1) * a.stride}")
    _need(len(d.splits) == 3 and all(x >= 0 for x in d.splits) and 0 < sum(d.splits) <= 1.0 + 1e-9,
          f"data.splits={list(d.splits)} must be three fractions (train, val, test) summing to at most 1")
    _need(d.num_workers >= 0, f"data.num_workers={d.num_workers} must be >= 0")
    if d.modality == "image":
        _need(bool(d.shape) and len(d.shape) == 3 and int(d.shape[2]) in (1, 3, 4),
              f"data.shape={list(d.shape) if d.shape else None} must be [H, W, C] with C in 1, 3, 4 for data.modality=image, e.g. [32, 32, 3]")
    _need(d.val_size is None or d.val_size >= 1, f"data.val_size={d.val_size} must be >= 1 or null")
    _need(d.max_bytes is None or d.max_bytes >= 1, f"data.max_bytes={d.max_bytes} must be >= 1 or null")
    _need(d.format in DATA_FORMATS, f"data.format={d.format} is unknown; valid: {', '.join(DATA_FORMATS)}")
    _need(d.sample_rate >= 1000, f"data.sample_rate={d.sample_rate} must be >= 1000 (the paper: 12000)")
    _need(d.synth in SYNTHS, f"data.synth={d.synth} is unknown; valid: {', '.join(SYNTHS)}")

    _need(o.lr > 0, f"optim.lr={o.lr} must be > 0")
    _need(o.warmup_steps >= 0, f"optim.warmup_steps={o.warmup_steps} must be >= 0")
    _need(o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay} must be >= 0")
    _need(o.grad_clip >= 0, f"optim.grad_clip={o.grad_clip} must be >= 0 (0 turns clipping off)")
    _need(0 <= o.min_lr_ratio <= 1, f"optim.min_lr_ratio={o.min_lr_ratio} must be in [0, 1]")

    _need(str(t.precision) in PRECISIONS, f"trainer.precision={t.precision} is not valid; valid: {', '.join(PRECISIONS)}")
    dev = t.devices
    _need(dev == "auto" or isinstance(dev, int) or (isinstance(dev, (list, ListConfig)) and all(isinstance(x, int) for x in dev)),
          f"trainer.devices={dev} must be auto, a count (e.g. 2; -1 for all) or a list of device indices")
    _need(t.strategy in STRATEGIES, f"trainer.strategy={t.strategy} is unknown; valid: {', '.join(STRATEGIES)}")
    _need(t.max_steps == -1 or t.max_steps >= 1, f"trainer.max_steps={t.max_steps} must be -1 (off) or >= 1")
    _need(t.accumulate_grad_batches >= 1, f"trainer.accumulate_grad_batches={t.accumulate_grad_batches} must be >= 1")
    _need(dev == "auto" or not isinstance(dev, int) or dev >= 1 or dev == -1,
          f"trainer.devices={dev} must be >= 1, -1 (all) or auto")
    _need(t.num_nodes >= 1, f"trainer.num_nodes={t.num_nodes} must be >= 1")
    _need(t.accelerator in ACCELERATORS, f"trainer.accelerator={t.accelerator} is unknown; valid: {', '.join(ACCELERATORS)}")
    if t.accelerator == "cpu":
        _need(str(t.precision) != "16-mixed", "trainer.precision=16-mixed needs a GPU (fp16 AMP with loss scaling); on CPU use bf16-mixed or 32")
        _need(t.strategy != "fsdp", "trainer.strategy=fsdp needs a GPU; on CPU use ddp (gloo) or auto")
    _need(t.checkpoint_every_n_steps is None or t.checkpoint_every_n_steps >= 1,
          f"trainer.checkpoint_every_n_steps={t.checkpoint_every_n_steps} must be >= 1 or null")
    _need(t.log_every_n_steps >= 1, f"trainer.log_every_n_steps={t.log_every_n_steps} must be >= 1")
    _need(t.max_bad_steps >= 0, f"trainer.max_bad_steps={t.max_bad_steps} must be >= 0 (0: never stop)")
    check_resume(cfg)
    _need(lg.kind in LOGGERS, f"logger.kind={lg.kind} is unknown; valid: {', '.join(LOGGERS)}")
    cb = cfg.callbacks
    _need(cb.samples.every_n_steps >= 0, f"callbacks.samples.every_n_steps={cb.samples.every_n_steps} must be >= 0 (0: only at the end)")
    _need(cb.samples.count >= 1, f"callbacks.samples.count={cb.samples.count} must be >= 1")
    _need(cb.samples.length is None or 1 <= cb.samples.length <= d.seq_len,
          f"callbacks.samples.length={cb.samples.length} must be in 1..data.seq_len={d.seq_len} or null")
    _need(cb.samples.temperature > 0, f"callbacks.samples.temperature={cb.samples.temperature} must be > 0")
    am = cb.attention_maps
    _need(am.every_n_steps >= 0, f"callbacks.attention_maps.every_n_steps={am.every_n_steps} must be >= 0 (0: start and end only)")
    _need(am.example >= 0, f"callbacks.attention_maps.example={am.example} must be >= 0")
    _need(all(0 <= q < d.seq_len for q in am.queries),
          f"callbacks.attention_maps.queries={list(am.queries)} must be positions in 0..{d.seq_len - 1}")
    _need(am.layers is None or (len(am.layers) > 0 and all(0 <= r < m.n_layer for r in am.layers)),
          f"callbacks.attention_maps.layers={list(am.layers) if am.layers is not None else None} must be blocks in 0..{m.n_layer - 1}")
    tp = cb.throughput
    _need(tp.window >= 1, f"callbacks.throughput.window={tp.window} must be >= 1")
    _need(tp.warmup >= 0, f"callbacks.throughput.warmup={tp.warmup} must be >= 0")
    _need(tp.peak_flops is None or tp.peak_flops > 0, f"callbacks.throughput.peak_flops={tp.peak_flops} must be > 0 or null")
    check_sample(cfg.sample)
    check_eval(cfg.eval)


def check_resume(cfg: DictConfig) -> None:
    """resume=last needs the run folder's last.ckpt; a path must exist (auto: anything goes)."""
    r = cfg.resume
    if r is None or r == "auto":
        return
    if r == "last":
        _need(bool(cfg.run_dir), "resume=last needs run_dir=<the run folder to continue> (or resume=<checkpoint path>)")
        ckpt = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
        _need(ckpt.is_file(), f"resume=last: {ckpt} does not exist; give run_dir=<a run folder with a checkpoint> or resume=auto")
        return
    _need(Path(r).is_file(), f"resume={r} is not a checkpoint file; valid: last, auto or the path of a .ckpt")


def _device_ok(dev: str) -> bool:
    return dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())


def check_sample(s, prefix: str = "sample.") -> None:
    """The sampling options that need no checkpoint (the prefix is checked against it later)."""
    _need(s.n >= 1, f"{prefix}n={s.n} must be >= 1 (how many samples)")
    _need(s.batch_size >= 1, f"{prefix}batch_size={s.batch_size} must be >= 1")
    _need(s.temperature >= 0, f"{prefix}temperature={s.temperature} must be >= 0 (0: greedy)")
    _need(s.top_k >= 0, f"{prefix}top_k={s.top_k} must be >= 0 (0: off)")
    _need(0 < s.top_p <= 1, f"{prefix}top_p={s.top_p} must be in (0, 1] (1: off)")
    _need(0 <= s.prime < 1, f"{prefix}prime={s.prime} must be a fraction in [0, 1) of the sequence")
    _need(s.prime_tokens is None or s.prime_tokens >= 0, f"{prefix}prime_tokens={s.prime_tokens} must be >= 0")
    _need(s.length is None or s.length >= 1, f"{prefix}length={s.length} must be >= 1")
    _need(s.cache in CACHE_MODES, f"{prefix}cache={s.cache} is unknown; valid: {', '.join(CACHE_MODES)}")
    _need(s.backend in BACKENDS, f"{prefix}backend={s.backend} is unknown; valid: {', '.join(BACKENDS)}")
    _need(_device_ok(s.device), f"{prefix}device={s.device} is unknown; valid: auto, cpu, cuda, cuda:<index>")


def check_eval(e, prefix: str = "eval.") -> None:
    _need(e.split in EVAL_SPLITS, f"{prefix}split={e.split} is unknown; valid: {', '.join(EVAL_SPLITS)}")
    _need(e.min_context >= 0, f"{prefix}min_context={e.min_context} must be >= 0 (0: disjoint windows)")
    _need(e.batch_size is None or e.batch_size >= 1, f"{prefix}batch_size={e.batch_size} must be >= 1")
    _need(e.limit is None or e.limit >= 1, f"{prefix}limit={e.limit} must be >= 1")
    _need(e.backend in BACKENDS, f"{prefix}backend={e.backend} is unknown; valid: {', '.join(BACKENDS)}")
    _need(_device_ok(e.device), f"{prefix}device={e.device} is unknown; valid: auto, cpu, cuda, cuda:<index>")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def help_text() -> str:
    lines = ["usage: python -m sparse_transformer.train [exp=<name>] [key=value ...] [--key=value ...] [--cfg]", "",
             f"experiments: {', '.join(experiments())}", "", "keys:"]
    for k, doc in field_docs().items():
        lines.append(f"  {k:32s} {doc}")
    return "\n".join(lines)


def main_config(argv: list[str] | None = None) -> DictConfig:
    """For entry points: parse, validate, handle --help/--cfg; on a bad command line print one line, exit 2."""
    try:
        cfg, flags = load_config(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if "help" in flags:
        print(help_text())
        raise SystemExit(0)
    if "cfg" in flags:
        print(to_yaml(cfg), end="")
        raise SystemExit(0)
    return cfg
