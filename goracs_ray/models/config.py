"""`ModelConfig`: the one model section (``model:``) that features, fine-tuning and evaluation read.

Every stage uses the same base model, the same LoRA parameterisation (the gradients GORACS
measures live in the adapter that fine-tuning trains), the same starting adapter, device and
DeepSpeed choice. Stage functions take a :class:`ModelConfig` whose ``path`` is set (the pipeline
builds the tiny model first when it is not) and the task as arguments.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from pathlib import Path

__all__ = [
    "ALL_LINEAR",
    "AUTO",
    "DEFAULT_TINY",
    "GradTarget",
    "LoraSettings",
    "ModelConfig",
    "TinyModelConfig",
    "as_model_config",
    "model_fingerprint",
]

AUTO = "auto"

_DTYPES = ("float32", "bfloat16", "float16")


ALL_LINEAR = "all-linear"
"""peft's shorthand for every linear layer but the output head."""


class GradTarget(str, enum.Enum):
    """Which LoRA parameters are trainable / have their per-sample gradients measured."""

    LAST_V_LORA_B = "last_v_lora_b"
    """Only ``layers[-1].self_attn.v_proj.lora_B`` (the reference, METHOD.md §6)."""
    ALL_LORA = "all_lora"
    """Every LoRA matrix (lora_A and lora_B of every target module)."""


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters (reference defaults: r 8, α 16, dropout 0.05, q_proj/v_proj)."""

    r: int = 8
    """Rank."""
    alpha: int = 16
    """Scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA input during training (inactive in eval mode)."""
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    """Module names that receive adapters; ``[all-linear]`` (or the string ``all-linear``): every
    linear layer of the decoder except the output head (peft's shorthand)."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"`r` must be ≥ 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout}")
        modules = self.target_modules
        modules = (modules,) if isinstance(modules, str) else tuple(modules)
        if not modules:
            raise ValueError("`target_modules` is empty; name at least one module, e.g. v_proj")
        if ALL_LINEAR in modules and len(modules) > 1:
            raise ValueError(f"`target_modules`: `{ALL_LINEAR}` stands alone, got {list(modules)}")
        object.__setattr__(self, "target_modules", modules)

    def to_peft(self):
        """The equivalent ``peft.LoraConfig`` for a causal LM."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=(
                ALL_LINEAR if self.target_modules == (ALL_LINEAR,) else list(self.target_modules)
            ),
            bias="none",
            task_type="CAUSAL_LM",
        )


@dataclasses.dataclass(frozen=True)
class TinyModelConfig:
    """Size and pretraining of the tiny LLaMA built when no ``model.path`` is given."""

    vocab_size: int = 1024
    """BPE vocabulary size."""
    hidden_size: int = 64
    """Hidden size."""
    num_layers: int = 2
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads."""
    intermediate_size: int = 128
    """MLP size."""
    max_position_embeddings: int = 512
    """Longest sequence."""
    pretrain_steps: int = 3000
    """At most this many next-token steps on the catalog text (item titles, years, genres;
    never the samples), fewer once the corpus loss stops improving (0: random init)."""
    pretrain_patience: int = 3
    """Corpus-loss checks (every 50 steps) without a 0.5 % gain before pretraining stops."""


DEFAULT_TINY = TinyModelConfig()
"""The default CPU model (≈ 0.2 M parameters): the full ml-100k pool fits in < 10 min on 2 cores."""


@dataclasses.dataclass
class ModelConfig:
    """The base LLM and its adapter, for every stage (features, fine-tuning, evaluation)."""

    path: Path | None = None
    """HF causal LM (LLaMA, Qwen, …): a local directory, a Hub repo id such as
    ``meta-llama/Llama-2-7b-hf`` (fetched once into the HF cache; ``HF_TOKEN`` for gated
    models, ``HF_HUB_OFFLINE=1`` to use the cache only), or a pyarrow.fs URI of a model
    directory (``s3://bucket/models/llama``, copied into ``$GORACS_CACHE_DIR``). ``None``:
    build a tiny LLaMA-architecture model and BPE tokenizer pretrained on the prepared
    catalog's item text only (titles, years, genres), never on the samples: it knows the
    items, not the users (CPU demos and tests)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when ``path`` is a Hub repo id; default ``main``."""
    tiny: TinyModelConfig = dataclasses.field(default_factory=TinyModelConfig)
    """Size and pretraining of the tiny model (used only when ``path`` is None)."""
    seed: int = 0
    """Seed of the tiny model's initialisation and pretraining."""
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)
    """The LoRA adapter: its gradients are the features' gradient norms, and fine-tuning trains
    it (ignored when ``adapter_path`` is given: that adapter's own settings are used)."""
    adapter_path: Path | None = None
    """Start from this peft adapter dir (the reference starts from an instruction-tuned adapter)
    instead of a fresh ``lora`` one: the features' gradients are measured on it and fine-tuning
    continues from it."""
    dtype: str = "float32"
    """Weights dtype of the features and evaluation forward passes: float32, bfloat16 or float16.
    Fine-tuning keeps float32 master weights (bfloat16 autocast on a GPU that supports it)."""
    device: str = AUTO
    """``auto`` (a GPU wherever Ray has one: one per fine-tuning worker, features actor and the
    evaluation), ``cpu``, or ``cuda`` (``cuda:i`` for the evaluation's device)."""
    deepspeed: int | str | None = AUTO
    """DeepSpeed ZeRO: ``auto`` (fine-tuning: stage 2 on GPU, plain DDP on CPU; features: plain
    torch), ``None`` (never), a stage ``0``–``3`` (fine-tuning config generated; features actors
    run the model as a ZeRO engine of that stage) or the path of a user DeepSpeed JSON config
    (fine-tuning, and the ``zero_optimization`` of ZeRO-3 features groups:
    ``features.model_shards``)."""

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(
                f"`model.dtype` must be float32, bfloat16 or float16, got {self.dtype!r}"
            )
        if self.device != AUTO and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(
                f"`model.device` must be 'auto', 'cpu' or 'cuda[:i]', got {self.device!r}"
            )
        ds = self.deepspeed
        if isinstance(ds, bool) or (isinstance(ds, int) and ds not in (0, 1, 2, 3)):
            raise ValueError(
                f"`model.deepspeed` must be a stage 0–3, a JSON path, 'auto' or null, got {ds!r}"
            )
        if isinstance(ds, str) and ds != AUTO and not Path(ds).is_file():
            raise ValueError(
                f"`model.deepspeed` = `{ds}` is neither 'auto' nor an existing DeepSpeed JSON "
                "file; give a stage 0–3, a JSON path, 'auto' or null"
            )

    def check_paths(self) -> None:
        """Check that ``path`` and ``adapter_path``, where set, are a HF model and a peft
        adapter dir (done by every stage before it starts work; a cluster config need not
        resolve on the machine that edits it).

        Raises
        ------
        FileNotFoundError
            Naming the field and what the directory lacks.
        """
        if self.path is not None and not (self.local_path / "config.json").is_file():
            raise FileNotFoundError(
                f"`model.path` `{self.path}` is not a HF model dir (no config.json); give a "
                "directory saved by `save_pretrained` or a Hub repo id (`owner/name`), or "
                "leave it null to build the tiny model"
            )
        if (
            self.adapter_path is not None
            and not (Path(self.adapter_path) / "adapter_config.json").is_file()
        ):
            raise FileNotFoundError(
                f"`model.adapter_path` `{self.adapter_path}` is not a peft adapter dir (no "
                "adapter_config.json); give the dir written by `goracs finetune` or peft"
            )

    @property
    def local_path(self) -> Path | None:
        """``path`` as a local directory: itself, or a Hub repo id's snapshot in the HF cache
        (:func:`local_model_dir`); None when ``path`` is None."""
        return None if self.path is None else local_model_dir(self.path, self.revision)

    @property
    def resolved_path(self) -> Path:
        """``path``, which must be set by now (the pipeline builds the tiny model first), after
        :meth:`check_paths`."""
        if self.path is None:
            raise ValueError(
                "`model.path` is not set: give a HF model dir, or build the tiny model first "
                "(`goracs model tiny --samples DIR --out MODEL`, or run the whole pipeline)"
            )
        self.check_paths()
        return local_model_dir(self.path, self.revision)

    def wants_gpu(self, gpus_available: bool) -> bool:
        """Whether a stage uses GPUs, given whether the cluster (or process) has any.

        Raises
        ------
        ValueError
            ``device`` is ``cuda`` but no GPU is available.
        """
        if self.device == AUTO:
            return gpus_available
        if self.device.startswith("cuda"):
            if not gpus_available:
                raise ValueError(
                    f"`model.device` is {self.device!r} but no GPU is available here; set "
                    "`model.device: auto` or `cpu`"
                )
            return True
        return False

    def deepspeed_setting(self, on_gpu: bool) -> int | Path | None:
        """Fine-tuning's DeepSpeed choice: a ZeRO stage, a user JSON path, or None (plain DDP).

        ``auto`` on a GPU without DeepSpeed installed is plain DDP (with a warning).

        Raises
        ------
        ValueError
            A stage or JSON config is asked for but DeepSpeed is not installed.
        """
        import importlib.util
        import logging

        installed = importlib.util.find_spec("deepspeed") is not None
        if self.deepspeed == AUTO:
            if on_gpu and not installed:
                logging.getLogger(__name__).warning(
                    "DeepSpeed is not installed: fine-tuning with plain DDP "
                    "(pip install 'goracs_ray[deepspeed]' for ZeRO-2 on GPUs)"
                )
                return None
            return 2 if on_gpu else None
        if self.deepspeed is not None and not installed:
            raise ValueError(
                f"`model.deepspeed: {self.deepspeed}` needs DeepSpeed, which is not installed: "
                "pip install 'goracs_ray[deepspeed]', or set `model.deepspeed: null`"
            )
        if isinstance(self.deepspeed, str):
            return Path(self.deepspeed)
        return self.deepspeed

    @property
    def features_zero_stage(self) -> int | None:
        """ZeRO stage of the features actors' DeepSpeed engine (None: plain torch)."""
        return self.deepspeed if isinstance(self.deepspeed, int) else None

    def features_zero3_config(self, model_shards: int) -> dict:
        """DeepSpeed config of a features group that partitions the model over ``model_shards``
        actors with ZeRO-3 (``features.model_shards`` > 1).

        ``model.deepspeed``: ``auto`` or ``3`` give ZeRO-3 with DeepSpeed's defaults; a JSON path
        gives its ``zero_optimization`` section (e.g. ``stage3_param_persistence_threshold``:
        parameters smaller than it, 100,000 elements by default, are kept whole on every worker),
        whose stage must be 3. Scoring only: no optimizer, batch size 1 per worker.

        Raises
        ------
        ValueError
            ``model.deepspeed`` is null or a stage other than 3, the JSON is not stage 3, or
            DeepSpeed is not installed.
        """
        import importlib.util
        import json

        fix = "set `model.deepspeed: 3` (or auto), or `features.model_shards: 1`"
        if importlib.util.find_spec("deepspeed") is None:
            raise ValueError(
                f"`features.model_shards: {model_shards}` partitions the model with DeepSpeed "
                "ZeRO-3, which is not installed: pip install 'goracs_ray[deepspeed]'"
            )
        zero: dict = {"stage": 3}
        if isinstance(self.deepspeed, str) and self.deepspeed != AUTO:
            zero = dict(json.loads(Path(self.deepspeed).read_text()).get("zero_optimization", {}))
            if zero.get("stage") != 3:
                raise ValueError(
                    f"`features.model_shards: {model_shards}` needs ZeRO stage 3, but "
                    f"`{self.deepspeed}` sets zero_optimization.stage {zero.get('stage')!r}; "
                    "make it 3, or set `features.model_shards: 1`"
                )
        elif self.deepspeed not in (AUTO, 3):
            raise ValueError(
                f"`features.model_shards: {model_shards}` partitions the model with ZeRO-3, but "
                f"`model.deepspeed` is {self.deepspeed!r}; {fix}"
            )
        return {"train_micro_batch_size_per_gpu": 1, "zero_optimization": zero}


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_IGNORE = ["*.pth", "*.h5", "*.msgpack", "*.onnx", "*.onnx_data", "*.ot", "original/*"]


def is_hub_id(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` reads as a Hub repo id (``owner/name``) and names no local path."""
    return not Path(path).exists() and bool(_HUB_ID.match(os.fspath(path)))


def local_model_dir(path: str | os.PathLike[str], revision: str | None = None) -> Path:
    """A local model directory for ``path``: ``path`` itself; for a pyarrow.fs URI
    (``s3://bucket/models/llama``) a copy in ``$GORACS_CACHE_DIR`` (fetched again when a file
    changes: :func:`goracs_ray.storage.fetch_input`); for a Hub repo id, its snapshot in the HF
    cache, downloaded on first use (``huggingface_hub.snapshot_download``:
    cached, resumable, offline with ``HF_HUB_OFFLINE=1``; other formats than safetensors/bin
    are skipped). On a multi-node cluster each node fetches into its own cache unless
    ``HF_HOME`` is shared storage.

    Raises
    ------
    FileNotFoundError
        The repo id cannot be fetched (unknown, gated without ``HF_TOKEN``, offline and not
        cached), naming ``model.path`` and the fix.
    """
    from goracs_ray.storage import fetch_input, is_uri

    if is_uri(path):  # s3://bucket/models/llama: a local copy in the cache, kept current
        from goracs_ray.data.fetch import default_cache_dir

        return fetch_input(os.fspath(path), default_cache_dir(), field="model.path")
    if not is_hub_id(path):
        return Path(path)
    from huggingface_hub import snapshot_download

    repo = os.fspath(path)
    try:
        return Path(snapshot_download(repo, revision=revision, ignore_patterns=_HUB_IGNORE))
    except Exception as e:  # offline, unknown, gated, network: one error naming the field
        raise FileNotFoundError(
            f"`model.path` `{repo}` is not a local directory and could not be fetched from the "
            f"Hugging Face Hub ({type(e).__name__}: {e}). Give a local model directory, check "
            "the repo id and `model.revision`, set HF_TOKEN for a gated model, or fetch it once "
            f"with network access (`hf download {repo}`) before running offline"
        ) from e


def model_fingerprint(path: str | os.PathLike[str], cache: str | os.PathLike[str] | None = None):
    """sha256 over the contents of a model or adapter dir (every file, by relative name).

    New weights at the same path give a new fingerprint. ``cache`` (a JSON file) remembers each
    file's hash by (path, size, mtime), so an unchanged multi-GB model is hashed once.
    """
    import hashlib
    import json

    root = Path(path).resolve()
    known: dict[str, str] = {}
    if cache is not None and Path(cache).is_file():
        try:
            known = json.loads(Path(cache).read_text())
        except ValueError:
            known = {}
    digest, fresh = hashlib.sha256(), {}
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = file.stat()
        tag = f"{file}|{stat.st_size}|{stat.st_mtime_ns}"
        if tag not in known:
            h = hashlib.sha256()
            with open(file, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
            known[tag] = h.hexdigest()
        fresh[tag] = known[tag]
        digest.update(f"{file.relative_to(root)}:{known[tag]}\n".encode())
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        Path(cache).write_text(json.dumps(fresh))
    return digest.hexdigest()


def as_model_config(model: ModelConfig | str | Path) -> ModelConfig:
    """``model`` itself, or ``ModelConfig(path=model)`` for a plain model dir."""
    if isinstance(model, ModelConfig):
        return model
    return ModelConfig(path=Path(model))
