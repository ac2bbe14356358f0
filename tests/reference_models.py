"""An independent float64 reference of DecLLM and RedLLM, written from the study's description.

Imports nothing from ``lightning_redllm``: it reads the real models' parameters by their
``state_dict`` names and recomputes the forward pass with plain tensor ops, so a test that
compares the two catches a broken architecture piece (a missing norm, a wrong RoPE position, a
dropped mask, an untied embedding, ...) instead of re-deriving the library from itself.

The architecture it encodes (DESIGN.md section 1):

* pre-norm blocks: ``x += o_proj(attn(rmsnorm(x) * w))``; RedLLM decoder blocks add
  ``x += cross_attn(rmsnorm(x) * w, encoder_out)``; then ``x += down(silu(gate(h)) * up(h))`` with
  ``h = rmsnorm(x) * w``; a final RMSNorm with weight; ``rmsnorm(x) = x / sqrt(mean(x^2) + eps)``.
* attention: Q, K, V projections, heads of ``head_dim``; parameter-free RMSNorm of Q, K and V over
  the head dim (``qkv_norm``); RoPE in the "rotate-half" layout (HF Llama), ``inv_freq =
  theta^(-2i/D)``; ``softmax(q k^T / sqrt(D) + mask) v`` with -inf on hidden keys; a parameter-free
  RMSNorm of each head's output (``attn_out_norm``: RedLLM by default, all three attentions);
  heads concatenated, ``o_proj``. Key/value head ``g`` serves query heads ``g*r .. g*r + r - 1``
  (``r = n_heads / n_kv_heads``).
* DecLLM: causal self-attention at positions ``0..T-1``; optional ``prefix_lengths`` make the
  keys inside each example's prefix visible to every query ("DecLLM + BiAttn").
* RedLLM: one matrix ``embed.weight`` embeds encoder and decoder inputs and projects the output.
  Bidirectional encoder at positions ``0..S-1`` with padded keys hidden, ``encoder_norm``; causal
  decoder at positions ``k, k+1, ...`` (``k`` = the example's unpadded encoder length);
  cross-attention queries rotated with the decoder positions, keys with the encoder positions,
  padded encoder keys hidden; ``decoder_norm``; logits ``= h @ E^T``.

``cfg`` is a plain dict with the architecture (``ModelConfig`` field names): ``family``,
``n_heads``, ``n_kv_heads`` (None/absent = ``n_heads``), ``head_dim``, ``n_layers`` or
``n_encoder_layers``/``n_decoder_layers``, ``rope_theta`` (10000), ``norm_eps`` (1e-6),
``qkv_norm`` (True), ``attn_out_norm`` (None/absent = the study's choice: RedLLM only).
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
from torch import Tensor

IGNORE = -100
F64 = torch.float64


# --------------------------------------------------------------------------- config
def _get(cfg: Mapping, key: str, default):
    value = cfg.get(key, default)
    return default if value is None else value


def _arch(cfg: Mapping) -> dict:
    family = cfg["family"]
    n_heads = int(cfg["n_heads"])
    attn_out_norm = cfg.get("attn_out_norm")
    if attn_out_norm is None:  # the study: RedLLM normalizes every attention output, DecLLM does not
        attn_out_norm = family == "redllm"
    return dict(
        family=family,
        n_heads=n_heads,
        n_kv_heads=int(_get(cfg, "n_kv_heads", n_heads)),
        head_dim=int(cfg["head_dim"]),
        theta=float(_get(cfg, "rope_theta", 10000.0)),
        eps=float(_get(cfg, "norm_eps", 1e-6)),
        qkv_norm=bool(_get(cfg, "qkv_norm", True)),
        attn_out_norm=bool(attn_out_norm),
    )


def _w(state: Mapping[str, Tensor], name: str) -> Tensor:
    if name not in state:
        raise KeyError(f"reference model: parameter {name!r} missing from the state dict")
    return state[name].detach().to(F64)


# --------------------------------------------------------------------------- primitives
def rmsnorm(x: Tensor, eps: float, weight: Optional[Tensor] = None) -> Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dim, times ``weight`` when given."""
    y = x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps)
    return y if weight is None else y * weight


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """y = x W^T (no bias)."""
    return torch.einsum("...i,oi->...o", x, weight)


def silu(x: Tensor) -> Tensor:
    return x / (1.0 + torch.exp(-x))


def rope_angles(positions: Tensor, head_dim: int, theta: float) -> Tensor:
    """positions (B, T) int -> angles (B, T, D/2) in float64: pos * theta^(-2i/D)."""
    i = torch.arange(head_dim // 2, dtype=F64)
    inv_freq = torch.pow(torch.tensor(theta, dtype=F64), -2.0 * i / head_dim)
    return positions.to(F64).unsqueeze(-1) * inv_freq


def rotate(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate-half RoPE. x (B, H, T, D), angles (B, T, D/2): the pair (x[i], x[i + D/2]) turns by
    angle[i]: (a, b) -> (a cos - b sin, b cos + a sin)."""
    half = x.shape[-1] // 2
    cos, sin = torch.cos(angles).unsqueeze(1), torch.sin(angles).unsqueeze(1)  # (B, 1, T, D/2)
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """q (B, H, T, D), k/v (B, H, S, D), allowed (B, T, S) bool -> (B, H, T, D), by hand."""
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed.unsqueeze(1), float("-inf"))
    top = scores.max(dim=-1, keepdim=True).values
    e = torch.exp(scores - top)
    p = e / e.sum(dim=-1, keepdim=True)
    return torch.einsum("bhts,bhsd->bhtd", p, v)


def attention(state: Mapping[str, Tensor], prefix: str, arch: dict, x_q: Tensor, x_kv: Tensor,
              q_pos: Tensor, k_pos: Tensor, allowed: Tensor) -> Tensor:
    """One attention sub-layer (already pre-normed inputs). x_q (B, T, C), x_kv (B, S, C),
    q_pos (B, T), k_pos (B, S), allowed (B, T, S) -> (B, T, C)."""
    h, g, d, eps = arch["n_heads"], arch["n_kv_heads"], arch["head_dim"], arch["eps"]
    bsz, t, _ = x_q.shape
    s = x_kv.shape[1]
    q = linear(x_q, _w(state, prefix + "q_proj.weight")).reshape(bsz, t, h, d).permute(0, 2, 1, 3)
    k = linear(x_kv, _w(state, prefix + "k_proj.weight")).reshape(bsz, s, g, d).permute(0, 2, 1, 3)
    v = linear(x_kv, _w(state, prefix + "v_proj.weight")).reshape(bsz, s, g, d).permute(0, 2, 1, 3)
    if arch["qkv_norm"]:
        q, k, v = rmsnorm(q, eps), rmsnorm(k, eps), rmsnorm(v, eps)
    q = rotate(q, rope_angles(q_pos, d, arch["theta"]))
    k = rotate(k, rope_angles(k_pos, d, arch["theta"]))
    # grouped-query: query head j reads key/value head j // (h / g)
    group = torch.arange(h) // (h // g)
    k, v = k[:, group], v[:, group]
    out = softmax_attention(q, k, v, allowed)  # (B, H, T, D)
    if arch["attn_out_norm"]:
        out = rmsnorm(out, eps)
    out = out.permute(0, 2, 1, 3).reshape(bsz, t, h * d)
    return linear(out, _w(state, prefix + "o_proj.weight"))


def mlp(state: Mapping[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    gate = linear(x, _w(state, prefix + "gate_proj.weight"))
    up = linear(x, _w(state, prefix + "up_proj.weight"))
    return linear(silu(gate) * up, _w(state, prefix + "down_proj.weight"))


def block(state: Mapping[str, Tensor], prefix: str, arch: dict, x: Tensor, pos: Tensor, self_allowed: Tensor,
          enc: Optional[Tensor] = None, enc_pos: Optional[Tensor] = None,
          cross_allowed: Optional[Tensor] = None) -> Tensor:
    eps = arch["eps"]
    h = rmsnorm(x, eps, _w(state, prefix + "attn_norm.weight"))
    x = x + attention(state, prefix + "self_attn.", arch, h, h, pos, pos, self_allowed)
    if enc is not None:
        h = rmsnorm(x, eps, _w(state, prefix + "cross_norm.weight"))
        x = x + attention(state, prefix + "cross_attn.", arch, h, enc, pos, enc_pos, cross_allowed)
    h = rmsnorm(x, eps, _w(state, prefix + "mlp_norm.weight"))
    return x + mlp(state, prefix + "mlp.", h)


def _embed(state: Mapping[str, Tensor], ids: Tensor) -> Tensor:
    return _w(state, "embed.weight")[ids]


def _logits(state: Mapping[str, Tensor], h: Tensor) -> Tensor:
    return torch.einsum("btc,vc->btv", h, _w(state, "embed.weight"))  # tied output projection


def _n_layers(state: Mapping[str, Tensor], stack: str) -> int:
    idx = {int(k.split(".")[1]) for k in state if k.startswith(stack + ".")}
    return max(idx) + 1 if idx else 0


# --------------------------------------------------------------------------- DecLLM
def ref_decllm_logits(state: Mapping[str, Tensor], cfg: Mapping, input_ids: Tensor,
                      prefix_lengths: Optional[Tensor] = None) -> Tensor:
    """(B, T) ids -> (B, T, V) float64 logits of the decoder-only model."""
    arch = _arch(cfg)
    bsz, t = input_ids.shape
    n_layers = int(cfg.get("n_layers") or _n_layers(state, "layers"))
    pos = torch.arange(t).expand(bsz, t)
    qi = torch.arange(t).view(1, t, 1)
    ki = torch.arange(t).view(1, 1, t)
    allowed = (ki <= qi).expand(bsz, t, t)
    if prefix_lengths is not None:
        allowed = allowed | (ki < prefix_lengths.view(bsz, 1, 1))
    x = _embed(state, input_ids)
    for i in range(n_layers):
        x = block(state, f"layers.{i}.", arch, x, pos, allowed)
    x = rmsnorm(x, arch["eps"], _w(state, "norm.weight"))
    return _logits(state, x)


# --------------------------------------------------------------------------- RedLLM
def ref_redllm_encode(state: Mapping[str, Tensor], cfg: Mapping, enc_ids: Tensor,
                      enc_lengths: Optional[Tensor] = None) -> Tensor:
    """(B, S) right-padded ids -> (B, S, C) final-normed encoder states (rows past each example's
    length are meaningless)."""
    arch = _arch(cfg)
    bsz, s = enc_ids.shape
    if enc_lengths is None:
        enc_lengths = torch.full((bsz,), s)
    n_layers = int(cfg.get("n_encoder_layers") or _n_layers(state, "encoder"))
    pos = torch.arange(s).expand(bsz, s)
    ki = torch.arange(s).view(1, 1, s)
    allowed = (ki < enc_lengths.view(bsz, 1, 1)).expand(bsz, s, s)  # bidirectional, no pad keys
    x = _embed(state, enc_ids)
    for i in range(n_layers):
        x = block(state, f"encoder.{i}.", arch, x, pos, allowed)
    return rmsnorm(x, arch["eps"], _w(state, "encoder_norm.weight"))


def ref_redllm_logits(state: Mapping[str, Tensor], cfg: Mapping, enc_ids: Tensor,
                      enc_lengths: Optional[Tensor], dec_ids: Tensor) -> Tensor:
    """Encoder (B, S) right-padded + decoder (B, T) -> (B, T, V) float64 logits."""
    arch = _arch(cfg)
    bsz, s = enc_ids.shape
    t = dec_ids.shape[1]
    if enc_lengths is None:
        enc_lengths = torch.full((bsz,), s)
    enc = ref_redllm_encode(state, cfg, enc_ids, enc_lengths)
    n_layers = int(cfg.get("n_decoder_layers") or _n_layers(state, "decoder"))
    dec_pos = enc_lengths.view(bsz, 1) + torch.arange(t).view(1, t)  # continues after the prompt
    enc_pos = torch.arange(s).expand(bsz, s)
    qi = torch.arange(t).view(1, t, 1)
    self_allowed = (torch.arange(t).view(1, 1, t) <= qi).expand(bsz, t, t)
    cross_allowed = (torch.arange(s).view(1, 1, s) < enc_lengths.view(bsz, 1, 1)).expand(bsz, t, s)
    x = _embed(state, dec_ids)
    for i in range(n_layers):
        x = block(state, f"decoder.{i}.", arch, x, dec_pos, self_allowed, enc=enc, enc_pos=enc_pos,
                  cross_allowed=cross_allowed)
    x = rmsnorm(x, arch["eps"], _w(state, "decoder_norm.weight"))
    return _logits(state, x)


# --------------------------------------------------------------------------- loss
def ref_loss(logits: Tensor, labels: Tensor, z_loss: float = 0.0) -> Tensor:
    """Mean over labels != -100 of ``logsumexp(z) - z_y + z_loss * logsumexp(z)^2`` (float64)."""
    z = logits.to(F64).reshape(-1, logits.shape[-1])
    y = labels.reshape(-1)
    keep = y != IGNORE
    z, y = z[keep], y[keep]
    if y.numel() == 0:
        return torch.zeros((), dtype=F64)
    top = z.max(dim=-1).values
    lse = top + torch.log(torch.exp(z - top.unsqueeze(-1)).sum(dim=-1))
    z_y = z[torch.arange(y.numel()), y]
    return (lse - z_y + z_loss * lse * lse).sum() / y.numel()


__all__ = ["ref_decllm_logits", "ref_redllm_encode", "ref_redllm_logits", "ref_loss", "rmsnorm", "rotate",
           "rope_angles", "softmax_attention"]
