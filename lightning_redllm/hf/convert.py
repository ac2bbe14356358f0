"""``ModelConfig`` <-> a ``transformers`` ``config.json``, and Llama's parameter names.

Three architectures, chosen by ``model_type``:

* ``lightning_decllm`` / ``lightning_redllm``: this package's models as remote code (the files in
  ``templates/``); parameter names are this package's own (``embed.weight``, ``layers.0.attn_norm.weight``...).
* ``llama``: a DecLLM whose attention has no normalizations (``qkv_norm`` false, no attention-output
  norm, no bidirectional prefix) *is* a tied-embedding Llama; it is exported as a native
  ``LlamaForCausalLM`` (parameter names mapped by :func:`to_llama_names`), no custom code needed.

What ``transformers`` does not know about (the preset name, the loss chunking) travels in
``config.json["lightning_redllm"]``, so an export imports back to the same ``ModelConfig``.
Nothing here imports ``transformers``.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from ..config import ModelConfig

DECLLM_TYPE, REDLLM_TYPE, LLAMA_TYPE = "lightning_decllm", "lightning_redllm", "llama"
MODEL_TYPES = (DECLLM_TYPE, REDLLM_TYPE, LLAMA_TYPE)
CONFIG_FILE, MODELING_FILE = "configuration_lightning_redllm", "modeling_lightning_redllm"
CLASSES = {
    DECLLM_TYPE: ("LightningDecLLMConfig", "LightningDecLLMForCausalLM", "AutoModelForCausalLM"),
    REDLLM_TYPE: ("LightningRedLLMConfig", "LightningRedLLMForConditionalGeneration", "AutoModelForSeq2SeqLM"),
}
EXTRAS_KEY = "lightning_redllm"


class ArchitectureError(ValueError):
    """A ``config.json`` describes a model this package cannot hold (one line, naming the key)."""


def is_native_llama(cfg: ModelConfig) -> bool:
    """Whether ``cfg`` computes exactly what ``transformers``' ``LlamaForCausalLM`` computes."""
    return (cfg.family == "decllm" and not cfg.qkv_norm and not cfg.attn_out_norm
            and not cfg.bidirectional_prefix)


def model_type_of(cfg: ModelConfig, native_llama: bool = True) -> str:
    if cfg.family == "redllm":
        return REDLLM_TYPE
    return LLAMA_TYPE if native_llama and is_native_llama(cfg) else DECLLM_TYPE


def hf_config(cfg: ModelConfig, *, bos_id: int, eos_id: int, pad_id: int, dtype: str, native_llama: bool = True,
              extras: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The ``config.json`` of ``cfg``'s export (``dtype``: ``"float32"``, ``"bfloat16"``...)."""
    kind = model_type_of(cfg, native_llama)
    common = {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_dim,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "rope_theta": cfg.rope_theta, "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        "initializer_range": cfg.init_std, "bos_token_id": bos_id, "eos_token_id": eos_id,
        "pad_token_id": pad_id, "tie_word_embeddings": True, "use_cache": True, "dtype": dtype,
    }
    extra = {"preset": cfg.name, "loss_chunk_tokens": cfg.loss_chunk_tokens, **(extras or {})}
    if kind == LLAMA_TYPE:
        out = {"architectures": ["LlamaForCausalLM"], "model_type": LLAMA_TYPE, **common,
               "num_hidden_layers": cfg.n_layers, "hidden_act": "silu", "attention_bias": False,
               "mlp_bias": False, "attention_dropout": cfg.dropout, "pretraining_tp": 1, "rope_scaling": None}
        extra["dropout"] = cfg.dropout  # Llama has no residual dropout: kept here for the way back
        out[EXTRAS_KEY] = extra
        return out
    config_cls, model_cls, auto = CLASSES[kind]
    out = {"architectures": [model_cls], "model_type": kind,
           "auto_map": {"AutoConfig": f"{CONFIG_FILE}.{config_cls}", auto: f"{MODELING_FILE}.{model_cls}"},
           **common, "qkv_norm": cfg.qkv_norm, "attn_out_norm": cfg.attn_out_norm, "dropout": cfg.dropout}
    if kind == DECLLM_TYPE:
        out.update(num_hidden_layers=cfg.n_layers, bidirectional_prefix=cfg.bidirectional_prefix)
    else:
        out.update(encoder_layers=cfg.n_encoder_layers, decoder_layers=cfg.n_decoder_layers,
                   num_hidden_layers=cfg.n_decoder_layers, is_encoder_decoder=True, decoder_start_token_id=bos_id)
    out[EXTRAS_KEY] = extra
    return out


def _need(data: dict, key: str, where: str) -> Any:
    if key not in data or data[key] is None:
        raise ArchitectureError(f"{where}: key {key!r} is missing")
    return data[key]


def _expect(data: dict, key: str, expected: Any, where: str, why: str, default: Any = None) -> None:
    value = data.get(key, default)
    if value != expected:
        raise ArchitectureError(f"{where}: {key} is {value!r}, lightning_redllm needs {expected!r} ({why})")


def model_config_from_hf(data: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """The ``ModelConfig`` of a ``config.json`` written by :func:`hf_config` (or a plain Llama's).

    Raises :class:`ArchitectureError` naming the first key that this package's models cannot express.
    """
    kind = data.get("model_type")
    if kind not in MODEL_TYPES:
        raise ArchitectureError(f"{where}: model_type is {kind!r}; lightning_redllm reads {', '.join(MODEL_TYPES)}")
    extra = data.get(EXTRAS_KEY) or {}
    if not isinstance(extra, dict):
        raise ArchitectureError(f"{where}: {EXTRAS_KEY} must be an object, got {type(extra).__name__}")
    _expect(data, "tie_word_embeddings", True, where, "one matrix embeds the inputs and projects the output",
            default=kind != LLAMA_TYPE)
    n_heads = int(_need(data, "num_attention_heads", where))
    hidden = int(_need(data, "hidden_size", where))
    fields: dict[str, Any] = dict(
        name=str(extra.get("preset", "")),
        vocab_size=int(_need(data, "vocab_size", where)), d_model=hidden, n_heads=n_heads,
        n_kv_heads=int(data.get("num_key_value_heads") or n_heads),
        head_dim=int(data.get("head_dim") or hidden // n_heads),
        ffn_dim=int(_need(data, "intermediate_size", where)),
        rope_theta=float(_rope_theta(data, where)),
        max_seq_len=int(data.get("max_position_embeddings") or 2048),
        norm_eps=float(data.get("rms_norm_eps", 1e-6)),
        init_std=float(data.get("initializer_range", 0.02)),
    )
    if "loss_chunk_tokens" in extra:
        fields["loss_chunk_tokens"] = int(extra["loss_chunk_tokens"])
    if kind == LLAMA_TYPE:
        for key, expected, why in (("hidden_act", "silu", "SwiGLU feed-forward"),
                                   ("attention_bias", False, "no biases"), ("mlp_bias", False, "no biases"),
                                   ("pretraining_tp", 1, "no tensor-parallel slicing of the weights")):
            _expect(data, key, expected, where, why, default=expected)  # absent = Llama's default = ours
        fields.update(family="decllm", n_layers=int(_need(data, "num_hidden_layers", where)), qkv_norm=False,
                      attn_out_norm=False, dropout=float(extra.get("dropout", data.get("attention_dropout", 0.0))))
    else:
        fields.update(qkv_norm=bool(data.get("qkv_norm", True)),
                      attn_out_norm=bool(_need(data, "attn_out_norm", where)), dropout=float(data.get("dropout", 0.0)))
        if kind == DECLLM_TYPE:
            fields.update(family="decllm", n_layers=int(_need(data, "num_hidden_layers", where)),
                          bidirectional_prefix=bool(data.get("bidirectional_prefix", False)))
        else:
            fields.update(family="redllm", n_encoder_layers=int(_need(data, "encoder_layers", where)),
                          n_decoder_layers=int(_need(data, "decoder_layers", where)))
    try:
        return ModelConfig(**fields)
    except ValueError as err:
        raise ArchitectureError(f"{where}: {err}") from None


def _rope_theta(data: dict[str, Any], where: str) -> float:
    """RoPE base from ``rope_parameters`` (transformers 5) or ``rope_theta``; refuses RoPE scaling."""
    params = data.get("rope_parameters") or data.get("rope_scaling")
    if params:
        if not isinstance(params, dict):
            raise ArchitectureError(f"{where}: rope_parameters must be an object, got {params!r}")
        kind = params.get("rope_type", params.get("type", "default"))
        if kind != "default":
            key = "rope_parameters" if data.get("rope_parameters") else "rope_scaling"
            raise ArchitectureError(f"{where}: {key}.rope_type is {kind!r}, lightning_redllm needs 'default' "
                                    "(unscaled RoPE)")
        if params.get("rope_theta") is not None:
            return params["rope_theta"]
    return data.get("rope_theta", 10000.0)


# --------------------------------------------------------------------------- Llama names
#: DecLLM parameter name <-> Llama parameter name, one template pair per tensor kind: ``{i}`` is the
#: layer index, ``{proj}`` one of the listed projections. Both directions are derived from this list.
_LLAMA_NAMES = [
    ("embed.weight", "model.embed_tokens.weight", ()),
    ("norm.weight", "model.norm.weight", ()),
    ("layers.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight", ()),
    ("layers.{i}.mlp_norm.weight", "model.layers.{i}.post_attention_layernorm.weight", ()),
    ("layers.{i}.self_attn.{proj}.weight", "model.layers.{i}.self_attn.{proj}.weight",
     ("q_proj", "k_proj", "v_proj", "o_proj")),
    ("layers.{i}.mlp.{proj}.weight", "model.layers.{i}.mlp.{proj}.weight", ("gate_proj", "up_proj", "down_proj")),
]


def _template_regex(template: str, projections: tuple[str, ...]) -> re.Pattern:
    """``layers.{i}.mlp.{proj}.weight`` -> a regex with named groups ``i`` and ``proj``."""
    rx = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)")
    rx = rx.replace(r"\{proj\}", "(?P<proj>" + "|".join(map(re.escape, projections)) + ")")
    return re.compile(f"^{rx}$")


def _rules(forward: bool) -> list[tuple[re.Pattern, str]]:
    return [(_template_regex(src, projs), dst) for ours, llama, projs in _LLAMA_NAMES
            for src, dst in [(ours, llama) if forward else (llama, ours)]]


_TO_LLAMA, _FROM_LLAMA = _rules(True), _rules(False)


def _rename(name: str, rules: list[tuple[re.Pattern, str]], what: str) -> str:
    for pattern, template in rules:
        m = pattern.match(name)
        if m:
            return template.format(**m.groupdict())
    raise ArchitectureError(f"parameter {name!r} has no {what} counterpart")


def to_llama_names(state: dict) -> dict:
    return {_rename(k, _TO_LLAMA, "LlamaForCausalLM"): v for k, v in state.items()}


def from_llama_names(state: dict, where: str) -> dict:
    """Llama names -> DecLLM names; a separate ``lm_head.weight`` equal to the embedding is dropped
    (``save_pretrained`` of a tied model omits it), a different one is refused."""
    state = dict(state)
    head = state.pop("lm_head.weight", None)
    emb = state.get("model.embed_tokens.weight")
    if head is not None and (emb is None or head.shape != emb.shape or not bool((head == emb).all())):
        raise ArchitectureError(f"{where}: lm_head.weight differs from model.embed_tokens.weight "
                                "(lightning_redllm ties the output projection to the embedding)")
    try:
        return {_rename(k, _FROM_LLAMA, "lightning_redllm DecLLM"): v for k, v in state.items()}
    except ArchitectureError as err:
        raise ArchitectureError(f"{where}: {err}") from None


__all__ = ["ArchitectureError", "MODEL_TYPES", "hf_config", "model_config_from_hf", "is_native_llama",
           "model_type_of", "to_llama_names", "from_llama_names"]
