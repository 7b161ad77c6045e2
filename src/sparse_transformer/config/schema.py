"""The configuration schema: one dataclass per section, a docstring per field (``--help`` prints it)
and, beside each field, what values it takes.

Choices are ``Literal`` types, so OmegaConf itself refuses a value outside them (a Literal holds
plain strings: nothing of ours is pickled into checkpoints). A field's other limits are a ``Rule``
in its metadata (``field(default=4, metadata=at_least(1))``); every float must also be finite.
``checks.check`` applies them, then what keys must agree on. Nothing here imports torch or
omegaconf: the network (model.py) is built from ModelConfig and AttentionConfig with torch alone.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Literal, Optional

from ..attention.constants import BACKENDS, INTEGRATIONS

CompileMode = Literal["blocks", "model", "cudagraphs"]
COMPILE_MODES = typing.get_args(CompileMode)  # model.compile_network's modes, named here without torch
Backend = Literal[BACKENDS]  # the names live in attention/constants.py
Integration = Literal[INTEGRATIONS]
Modality = Literal["text", "image", "audio"]
DataFormat = Literal["arrow", "raw"]
Synth = Literal["auto", "fluidsynth", "simple"]
Accelerator = Literal["auto", "cpu", "gpu", "cuda"]
Strategy = Literal["auto", "ddp", "fsdp", "ddp_spawn"]
LoggerKind = Literal["wandb", "csv", "none"]
CacheMode = Literal["sparse", "dense", "none"]
EvalSplit = Literal["test", "validation"]
# Not a Literal: a Literal compares by type, and trainer.precision=32 arrives as an int (a str field
# turns it into "32", the value Lightning and saved configs have always had).
PRECISIONS = ("auto", "32", "32-true", "64", "64-true", "bf16-mixed", "16-mixed", "bf16-true")


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line naming the key and what is valid."""


# ------------------------------------------------------------------------------------------------
# Rules: what one field's value must be (None always passes an Optional field)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """``test(value)`` holds, or the message is "<key>=<value> <verb> <valid>"."""

    valid: str
    test: Callable[[Any], bool]
    verb: str = "must be"


def rule(valid: str, test: Callable[[Any], bool], verb: str = "must be") -> dict:
    return {"rule": Rule(valid, test, verb)}


def at_least(lo: float, note: str = "") -> dict:
    return rule(f">= {lo}{note}", lambda v: v >= lo)


def above(lo: float, note: str = "") -> dict:
    return rule(f"> {lo}{note}", lambda v: v > lo)


def between(lo: float, hi: float, ends: str = "[]", note: str = "") -> dict:
    """lo..hi; ``ends`` says which ends are included, as in "[0, 1)"."""
    return rule(f"in {ends[0]}{lo}, {hi}{ends[1]}{note}",
                lambda v: (lo <= v if ends[0] == "[" else lo < v) and (v <= hi if ends[1] == "]" else v < hi))


def _duration_ok(v: str) -> bool:
    """DD:HH:MM:SS (Lightning's max_time string), each part a whole number >= 0, not all zero."""
    parts = str(v).strip().split(":")
    return len(parts) == 4 and all(p.isdigit() for p in parts) and any(int(p) for p in parts)


def _steps_or_fraction(v: float) -> bool:
    """A fraction of an epoch in (0, 1], or a whole number of steps."""
    return 0 < v <= 1 or (v > 1 and float(v).is_integer())


def _count_or_fraction(v: float) -> bool:
    """A fraction in [0, 1], or a whole number (Lightning reads 1.5 as neither)."""
    return 0 <= v <= 1 or (v > 1 and float(v).is_integer())


def _device_ok(dev: str) -> bool:
    return dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())


DEVICE = rule("auto, cpu, cuda, cuda:<index>", _device_ok, "is unknown; valid:")


# ------------------------------------------------------------------------------------------------
# The sections
# ------------------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    """The network's size and regularisation (with AttentionConfig and the data's shape, all that
    ``model.SparseTransformer`` is built from)."""

    n_layer: int = field(default=4, metadata=at_least(1))
    """Number of residual blocks (attention + feed-forward)."""
    n_head: int = field(default=4, metadata=at_least(1))
    """Attention heads per block; d_model and d_model*qk_ratio must be multiples of it."""
    d_model: int = field(default=128, metadata=at_least(1))
    """Width of the residual stream."""
    ffn_mult: float = field(default=4.0, metadata=above(0, " (4, or 2 for half-size)"))
    """Feed-forward inner width as a multiple of d_model (4; the paper's half-size layers use 2)."""
    qk_ratio: float = field(default=1.0, metadata=between(0, 4, "(]"))
    """Width of Q and K relative to d_model (the paper's half-size QK: 0.5)."""
    dropout: float = field(default=0.0, metadata=between(0, 1, "[)"))
    """Dropout at the end of each residual branch (never inside attention)."""
    emb_dropout: float = field(default=0.0, metadata=between(0, 1, "[)"))
    """Dropout on the summed embeddings (OpenAI's code; 0 for CIFAR-10)."""
    recompute: bool = False
    """Recompute attention and feed-forward in backward (activation checkpointing per block)."""
    compile: bool = False
    """torch.compile the network as model.compile_mode says (by default the whole network, forward and backward, one graph), attention included (its plans are prepared outside the graph), with static shapes: a short last batch and validation compile once more each."""
    compile_mode: CompileMode = "model"
    """With model.compile: model (the whole network one graph) | blocks (each residual block its own graph) | cudagraphs (the whole network replayed as CUDA graphs, torch.compile's reduce-overhead; GPU only)."""
    vocab_size: int = field(default=256, metadata=at_least(256, " (every modality's tokens are bytes, 0..255)"))
    """Token vocabulary (bytes, 8-bit pixels, 8-bit mu-law audio: 256; more only wastes logits)."""


@dataclass
class AttentionConfig:
    """Which keys each query attends, and how it is computed (the network's other half)."""

    pattern: str = "strided"
    """dense | strided | fixed | a primitive (local, stride, block, summary) | a registered name."""
    stride: int = field(default=32, metadata=rule("an int >= 1 (about sqrt(seq_len))", lambda v: v >= 1))
    """l: the local window / stride / block length (about sqrt(seq_len))."""
    summary: Optional[int] = field(default=None, metadata=at_least(1))
    """c: summary cells per block for fixed/summary (the paper: 8, 16 or 32); must be <= stride."""
    summary_heads: int = field(default=1, metadata=at_least(1))
    """Distinct c-wide summary slices across heads (head h uses slice h % summary_heads), <= stride/summary."""
    integration: Integration = "interleaved"
    """How the pair's two parts share heads and blocks: interleaved | merged | multihead."""
    layout: Optional[list[str]] = None
    """An explicit cycle of patterns per residual block, e.g. [stride, local, local, local]; wins over integration."""
    backend: Backend = "auto"
    """auto | reference | blocked | sdpa | flex | triton (auto: sdpa for dense; on CUDA triton where its kernels apply, else flex; blocked on CPU)."""


def _fractions(s) -> bool:
    return len(s) == 3 and all(x >= 0 for x in s) and 0 < sum(s) <= 1.0 + 1e-9


@dataclass
class DataConfig:
    modality: Modality = "text"
    """text | image | audio: picks the DataModule."""
    source: str = "pydoc"
    """Where the data comes from: a built-in corpus (text: pydoc, shakespeare; audio: bach), 'local' (data.path), or a hub dataset name."""
    path: Optional[str] = None
    """Local data for source=local: a text file or zip (enwik8), idx files or an image folder, audio files, or a saved/parquet dataset folder."""
    cache_dir: str = "data"
    """Where prepared token arrays are stored (never committed)."""
    seq_len: int = field(default=256, metadata=at_least(2))
    """Tokens per training window (n); images: H*W*C."""
    shape: Optional[list[int]] = None
    """The data's shape, e.g. [64, 64, 3] (images need it); text/audio default to [seq_len], which the model factorizes as [seq_len/stride, stride]."""
    batch_size: int = field(default=16, metadata=at_least(1))
    """Windows per step per device."""
    eval_batch_size: Optional[int] = field(default=None, metadata=at_least(1))
    """Windows per validation/test step (default: batch_size)."""
    splits: list[float] = field(default_factory=lambda: [0.9, 0.05, 0.05],
                                metadata=rule("three fractions (train, val, test) summing to at most 1", _fractions))
    """Fractions of a single-stream corpus used for train / val / test (contiguous, in that order)."""
    max_bytes: Optional[int] = field(default=None, metadata=at_least(1))
    """Cap on the prepared tokens (e.g. 30000000 to carry a subset to the GPU machine): text keeps its first max_bytes, images and audio shrink every split in proportion."""
    num_workers: int = field(default=0, metadata=at_least(0))
    """DataLoader worker processes."""
    pin_memory: bool = False
    """Pin host memory for faster copies to the GPU."""
    persistent_workers: bool = False
    """Keep workers alive between epochs (needs num_workers > 0)."""
    streaming: bool = False
    """Stream a hub dataset (IterableDataset sharded per rank) instead of preparing it on disk."""
    val_windows: Optional[int] = field(default=None, metadata=at_least(1))
    """Evaluate on at most this many validation windows (None: the whole split)."""
    val_size: Optional[int] = field(default=None, metadata=at_least(1))
    """Images/audio tracks held out of the train split for validation (cifar10: 2000); None: the source's validation split, else data.splits."""
    test_split: str = "test"
    """The source's split used as the test set (imagenet64: validation, the paper's 'official validation set')."""
    format: DataFormat = "arrow"
    """Prepared-data format: arrow (a datasets DatasetDict) | raw (flat uint8 files read with numpy alone, for machines without datasets)."""
    sample_rate: int = field(default=12000, metadata=at_least(1000, " (the paper: 12000)"))
    """Audio samples per second after resampling (the paper: 12 kHz), stored as 8-bit mu-law."""
    synth: Synth = "auto"
    """How scores (bach) become audio: auto (fluidsynth if it and a GM soundfont are installed, else simple) | fluidsynth | simple (own additive synthesizer)."""


@dataclass
class OptimConfig:
    lr: float = field(default=3e-4, metadata=above(0))
    """Peak learning rate (AdamW)."""
    warmup_steps: int = field(default=5000, metadata=at_least(0))
    """Linear warm-up steps, then cosine decay to min_lr_ratio*lr at the last step."""
    min_lr_ratio: float = field(default=0.0, metadata=between(0, 1))
    """Final learning rate as a fraction of lr."""
    weight_decay: float = field(default=0.01, metadata=at_least(0))
    """Decoupled weight decay on the linear layers' weight matrices (not biases, norms or embeddings)."""
    grad_clip: float = field(default=1.0, metadata=at_least(0, " (0 turns clipping off)"))
    """Clip the global gradient norm to this (0: off)."""
    beta1: float = field(default=0.9, metadata=between(0, 1, "[)"))
    """Adam beta1."""
    beta2: float = field(default=0.999, metadata=between(0, 1, "[)"))
    """Adam beta2 (OpenAI's code: 0.999)."""


@dataclass
class TrainerConfig:
    max_steps: int = field(default=-1, metadata=rule("-1 (off) or >= 1", lambda v: v == -1 or v >= 1))
    """Stop after this many optimizer steps (-1: use max_epochs)."""
    max_epochs: Optional[int] = field(default=None, metadata=rule("-1 (no limit) or >= 1", lambda v: v == -1 or v >= 1))
    """Stop after this many epochs (None with max_steps=-1: 1 epoch)."""
    max_time: Optional[str] = field(default=None, metadata=rule("DD:HH:MM:SS, e.g. 00:12:00:00 for 12 hours", _duration_ok,
                                                                "is not a duration; valid:"))
    """Wall-clock limit, DD:HH:MM:SS (Lightning's max_time)."""
    precision: str = field(default="auto",
                           metadata=rule(", ".join(PRECISIONS), lambda v: v in PRECISIONS, "is not valid; valid:"))
    """auto (bf16-mixed on GPU, 32 on CPU) | 32 | bf16-mixed | 16-mixed (fp16 with Lightning's dynamic loss scaling; GPU only) | bf16-true | 64."""
    accelerator: Accelerator = "auto"
    """auto | cpu | gpu | cuda."""
    devices: Any = "auto"
    """Devices per node (an int, a list, or auto)."""
    num_nodes: int = field(default=1, metadata=at_least(1))
    """Nodes (multi-node through SLURM or torchrun)."""
    strategy: Strategy = "auto"
    """auto | ddp (NCCL on GPUs, gloo on CPU) | fsdp (sharded block by block; GPU only) | ddp_spawn."""
    accumulate_grad_batches: int = field(default=1, metadata=at_least(1))
    """Gradient accumulation steps."""
    val_check_interval: Optional[float] = field(default=None, metadata=rule(
        "a fraction of an epoch in (0, 1] or a whole number of steps > 1", _steps_or_fraction))
    """Validate every this many training steps (> 1) or this fraction of an epoch (<= 1)."""
    limit_val_batches: Optional[float] = field(default=None, metadata=rule(
        "a fraction in [0, 1] or a whole number of batches (0: no validation)", _count_or_fraction))
    """Validate on at most this many batches (int) or fraction (float)."""
    log_every_n_steps: int = field(default=10, metadata=at_least(1))
    """How often to log training metrics; also how often the host reads the device (skipped-step counts, the progress bar, the ranks' SIGTERM and max_time agreement), so a larger value syncs less."""
    fast_dev_run: bool = False
    """Run one training and one validation batch, for smoke tests."""
    enable_progress_bar: bool = True
    """Show Lightning's progress bar."""
    deterministic: bool = False
    """Ask torch for deterministic algorithms."""
    checkpoint_every_n_steps: Optional[int] = field(default=1000, metadata=at_least(1))
    """Save checkpoints/last.ckpt every this many optimizer steps, and at the end (null: at the end only; Lightning 2.6 saves no last.ckpt at validations or epoch ends)."""
    keep_checkpoints: int = field(default=2, metadata=at_least(1, " (1: last.ckpt only)"))
    """How many of the latest checkpoints to keep: last.ckpt and the ones saved before it, previous.ckpt, previous-2.ckpt, ... (2: last and previous; each is a full checkpoint, ~1.8 GB at the ImageNet64 size). resume=last/auto falls back to the newest readable one."""
    save_best: bool = True
    """Also keep checkpoints/best.ckpt, the checkpoint with the lowest val/bpd so far (Lightning's ModelCheckpoint, written after a validation that improved it)."""
    max_bad_steps: int = field(default=5, metadata=at_least(0, " (0: never stop)"))
    """A nan/inf training loss or gradient norm on any rank skips that optimizer step on every rank (decided on the device, counted in train/skipped_steps); this many in a row stop the run with an error naming the steps (0: never stop). The host reads the counts every log_every_n_steps steps, so the run may go on for up to that many steps past the limit."""
    early_stopping: int = field(default=0, metadata=at_least(0, " (0: off)"))
    """Stop when val/bpd has not improved for this many validations in a row (Lightning's EarlyStopping; 0: off)."""


def default_logger() -> str:
    """wandb where it is installed (offline without an API key or network), csv otherwise."""
    return "wandb" if importlib.util.find_spec("wandb") is not None else "csv"


@dataclass
class LoggerConfig:
    kind: LoggerKind = field(default_factory=default_logger)
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
    every_n_steps: int = field(default=0, metadata=at_least(0, " (0: only at the end)"))
    """Generate and log samples every this many training steps (0: only at the end of training)."""
    at_end: bool = True
    """Also generate samples when training ends."""
    count: int = field(default=4, metadata=at_least(1))
    """Samples per round (images are laid out in a grid)."""
    length: Optional[int] = field(default=None, metadata=at_least(1))
    """Tokens per text/audio sample (default: data.seq_len); images always fill data.shape."""
    temperature: float = field(default=1.0, metadata=above(0))
    """Softmax temperature of the sampler."""


@dataclass
class AttentionMapsConfig:
    enabled: bool = True
    """Draw attention maps for a fixed validation example at the start and end of training."""
    every_n_steps: int = field(default=0, metadata=at_least(0, " (0: start and end only)"))
    """Also draw them every this many training steps (0: only at the start and end)."""
    example: int = field(default=0, metadata=at_least(0))
    """Index of the validation window whose attention is drawn."""
    queries: list[int] = field(default_factory=list)
    """Query positions to draw (default: three spread over the sequence, the last one included)."""
    layers: Optional[list[int]] = None
    """Residual blocks to draw (default: all, or 8 spread evenly over deeper models)."""


@dataclass
class ThroughputConfig:
    enabled: bool = True
    """Log tokens/s, FLOP/s and MFU of training (train/device/items_per_sec, train/items_per_sec, ...) once per window."""
    window: int = field(default=20, metadata=at_least(1))
    """Optimizer steps per measurement window: one GPU synchronisation and one logged rate per window."""
    warmup: int = field(default=10, metadata=at_least(0))
    """Optimizer steps left out before the first window (compilation, autotuning, CUDA graph capture)."""
    peak_flops: Optional[float] = field(default=None, metadata=above(0))
    """Peak FLOP/s of one device for MFU (None: 989e12, H100/H200 dense bf16, on CUDA; no MFU on CPU)."""


@dataclass
class CallbacksConfig:
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    attention_maps: AttentionMapsConfig = field(default_factory=AttentionMapsConfig)
    throughput: ThroughputConfig = field(default_factory=ThroughputConfig)


@dataclass
class SampleConfig:
    ckpt: Optional[str] = None
    """Checkpoint to sample from (ckpt=<path> on the command line)."""
    n: int = field(default=16, metadata=at_least(1, " (how many samples)"))
    """Number of samples."""
    batch_size: int = field(default=16, metadata=at_least(1))
    """Samples generated together."""
    temperature: float = field(default=1.0, metadata=at_least(0, " (0: greedy)"))
    """Divide the logits by this (0: greedy, always the most likely token)."""
    top_k: int = field(default=0, metadata=at_least(0, " (0: off)"))
    """Sample among the k most likely tokens only (0: off)."""
    top_p: float = field(default=1.0, metadata=between(0, 1, "(]", " (1: off)"))
    """Nucleus sampling: among the fewest most likely tokens whose probability reaches top_p (1: off)."""
    prime: float = field(default=0.0, metadata=rule("a fraction in [0, 1) of the sequence", lambda v: 0 <= v < 1))
    """Prime each sample with this fraction of a test-split example (0.5: an image's top half, an audio clip's first half)."""
    prime_tokens: Optional[int] = field(default=None, metadata=at_least(0))
    """Prime with this many tokens of a test-split example instead (wins over prime)."""
    prompt: Optional[str] = None
    """Text models: prime every sample with this text (UTF-8 bytes), instead of test data."""
    length: Optional[int] = field(default=None, metadata=at_least(1))
    """Tokens per sample, prefix included (default: the model's sequence length)."""
    cache: CacheMode = "sparse"
    """sparse (each step attends only its pattern's keys) | dense (every cached key, masked) | none (recompute)."""
    backend: Backend = "auto"
    """Attention backend of full passes, i.e. the prefix (auto: blocked on CPU; on CUDA triton, or flex where its kernels do not apply), whatever the checkpoint trained with."""
    device: str = field(default="auto", metadata=DEVICE)
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
    split: EvalSplit = "test"
    """test | validation."""
    min_context: int = field(default=0, metadata=at_least(0, " (0: disjoint windows)"))
    """Every scored token sees at least this much context (the paper's Table 3): overlapping windows scoring only their tail (0: disjoint windows)."""
    batch_size: Optional[int] = field(default=None, metadata=at_least(1))
    """Windows per forward pass (default: data.eval_batch_size or data.batch_size)."""
    limit: Optional[int] = field(default=None, metadata=at_least(1))
    """Score at most this many windows (a quick check; the JSON then says complete: false)."""
    backend: Backend = "auto"
    """Attention backend (auto: blocked on CPU; on CUDA triton, or flex where its kernels do not apply), whatever the checkpoint trained with."""
    device: str = field(default="auto", metadata=DEVICE)
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
    """Resume exactly (weights, optimiser, schedule, step, RNG, data position): 'last' (run_dir's checkpoints/last.ckpt, or the newest readable previous one), 'auto' (the same if there is one, else start fresh: for requeued jobs) or a checkpoint path."""
    overwrite: bool = False
    """Replace the run in run_dir: without it, run_dir=<a folder holding a run> and no resume is refused (continue it with resume=last, or give a new run_dir). With it, that run's config.yaml, summary.json, metrics.csv and checkpoints are removed first; other files (samples, attention maps, eval, wandb) stay."""
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
# Reading the schema: its leaves, their docstrings and rules
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Leaf:
    """One key of the schema: the dataclass that declares it, its field and its type."""

    owner: type
    field: Any
    type: Any

    @property
    def is_list(self) -> bool:
        return any(typing.get_origin(t) is list for t in (self.type, *typing.get_args(self.type)))


@functools.lru_cache(maxsize=None)
def leaves(cls: type = Config, prefix: str = "") -> dict[str, Leaf]:
    """``{dotted key: Leaf}`` for every leaf of ``cls``, in declaration order."""
    out: dict[str, Leaf] = {}
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            out.update(leaves(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = Leaf(cls, f, hints[f.name])
    return out


@functools.lru_cache(maxsize=None)  # parsing a class's source costs ~0.1 s; every load_config asks
def _docstrings(cls: type) -> dict[str, str]:
    """The string literal after each annotated field in ``cls``'s source (an attribute docstring)."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    return {a.target.id: str(b.value.value) for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)}


def field_docs(cls: type = Config, prefix: str = "") -> dict[str, str]:
    """``{dotted key: docstring}`` for every leaf of the schema (what --help prints)."""
    return {k: _docstrings(leaf.owner).get(leaf.field.name, "") for k, leaf in leaves(cls, prefix).items()}


def section(cls: type, node):
    """``node`` (a section of a run's config, e.g. a checkpoint's ``model``: a dict or DictConfig) as a
    ``cls`` instance with plain values; keys an older config lacks keep their defaults."""
    def plain(v):
        return list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v

    return cls(**{f.name: plain(node[f.name]) for f in fields(cls) if f.name in node})
