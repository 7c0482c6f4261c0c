"""Smoke tests of a registered model, loaded back from the registry in this process.

This checks what was registered (weights, tokenizer, generation config) before any
endpoint exists: a model that cannot be loaded or answers nonsense is caught in seconds,
not after a 30-minute endpoint creation. It loads the transformers components directly
and decodes greedily, as the served model will by default.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SmokeResult:
    model_uri: str
    prompt: str
    text: str
    prompt_tokens: int
    completion_tokens: int


def complete_from_registry(model_uri: str, prompt: str, max_tokens: int = 16) -> SmokeResult:
    """Greedy completion of ``prompt`` by the registered causal LM at ``model_uri``."""
    import mlflow
    import torch

    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be >= 1")
    components = mlflow.transformers.load_model(model_uri, return_type="components")
    model, tokenizer = components["model"].eval(), components["tokenizer"]
    encoded = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **encoded,
            max_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    new = out[0, encoded["input_ids"].shape[1] :]
    return SmokeResult(
        model_uri=model_uri,
        prompt=prompt,
        text=tokenizer.decode(new, skip_special_tokens=True),
        prompt_tokens=int(encoded["input_ids"].shape[1]),
        completion_tokens=int(new.shape[0]),
    )


def embed_from_registry(model_uri: str, texts: list[str]) -> list[list[float]]:
    """Embeddings of ``texts`` from the registered encoder, pooled as its metadata says."""
    import mlflow
    import torch

    from ptdeploy.pooling import DEFAULT_POOLING, pool

    info = mlflow.models.get_model_info(model_uri)
    pooling = (info.metadata or {}).get("pooling") or DEFAULT_POOLING
    components = mlflow.transformers.load_model(model_uri, return_type="components")
    model, tokenizer = components["model"].eval(), components["tokenizer"]
    encoded = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**encoded).last_hidden_state
    # the engine's pooling, so the smoke test embeds exactly as the endpoint will
    vectors = pool(hidden, encoded["attention_mask"], pooling)
    return vectors.tolist()
