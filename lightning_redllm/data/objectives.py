"""Training objectives: turn data batches into model inputs and labels. Pure torch, device-agnostic.

The LightningModules call these on the device after the batch transfer. ``IGNORE_INDEX`` (-100)
marks label positions without loss (``torch.nn.functional.cross_entropy``'s default).

Shapes: B batch, L packed sequence length, P prefix length, Li / Lt padded input / target lengths.
"""
from __future__ import annotations

import torch

IGNORE_INDEX = -100


def _bos_column(x: torch.Tensor, bos_id: int) -> torch.Tensor:
    return torch.full((x.shape[0], 1), bos_id, dtype=x.dtype, device=x.device)  # (B, 1)


def _check_2d(name: str, x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be (batch, length), got shape {tuple(x.shape)}")


def causal_lm(tokens: torch.Tensor, bos_id: int) -> dict[str, torch.Tensor]:
    """Decoder-only LM on packed sequences: every token is a target.

    Args:
        tokens: (B, L) packed tokens.
    Returns:
        ``input_ids`` (B, L) = ``[bos] + tokens[:, :-1]``, ``labels`` (B, L) = ``tokens``.
    """
    _check_2d("tokens", tokens)
    input_ids = torch.cat([_bos_column(tokens, bos_id), tokens[:, :-1]], dim=1)  # (B, L)
    return {"input_ids": input_ids, "labels": tokens}


def prefix_lm(tokens: torch.Tensor, prefix_len: int, bos_id: int) -> dict[str, torch.Tensor]:
    """Encoder-decoder prefix LM: the first ``prefix_len`` tokens go to the encoder, the rest are targets.

    Args:
        tokens: (B, L) packed tokens.
        prefix_len: split point P with 0 < P < L.
    Returns:
        ``encoder_input_ids`` (B, P), ``encoder_lengths`` (B,) all P, ``decoder_input_ids``
        (B, L-P) = ``[bos] + tokens[:, P:-1]``, ``labels`` (B, L-P) = ``tokens[:, P:]``.
    """
    _check_2d("tokens", tokens)
    seq_len = tokens.shape[1]
    if not 0 < prefix_len < seq_len:
        raise ValueError(f"prefix_len must be in (0, {seq_len}) for sequences of {seq_len} tokens, got {prefix_len}")
    labels = tokens[:, prefix_len:]  # (B, L-P)
    return {
        "encoder_input_ids": tokens[:, :prefix_len],  # (B, P)
        "encoder_lengths": torch.full((tokens.shape[0],), prefix_len, dtype=torch.long, device=tokens.device),
        "decoder_input_ids": torch.cat([_bos_column(tokens, bos_id), labels[:, :-1]], dim=1),  # (B, L-P)
        "labels": labels,
    }


def prefix_causal_lm(tokens: torch.Tensor, prefix_len: int, bos_id: int) -> dict[str, torch.Tensor]:
    """Decoder-only prefix LM ("DecLLM + BiAttn" scoring): the same split as :func:`prefix_lm`.

    ``input_ids`` (B, L) = ``[bos] + tokens[:, :-1]``; ``labels`` = ``tokens`` with IGNORE_INDEX on
    the first P positions (the prefix is seen bidirectionally, so it cannot be a target);
    ``prefix_lengths`` (B,) = P + 1 (bos + the P prefix tokens).
    """
    _check_2d("tokens", tokens)
    seq_len = tokens.shape[1]
    if not 0 < prefix_len < seq_len:
        raise ValueError(f"prefix_len must be in (0, {seq_len}) for sequences of {seq_len} tokens, got {prefix_len}")
    out = causal_lm(tokens, bos_id)
    labels = out["labels"].clone()
    labels[:, :prefix_len] = IGNORE_INDEX
    out["labels"] = labels
    out["prefix_lengths"] = torch.full((tokens.shape[0],), prefix_len + 1, dtype=torch.long, device=tokens.device)
    return out


def _positions(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width, device=lengths.device).unsqueeze(0).expand(lengths.shape[0], width)  # (B, W)


def instruct_encoder_decoder(
    inputs: torch.Tensor,
    input_lengths: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    bos_id: int,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """Encoder-decoder instruction tuning: inputs to the encoder, targets (eos included) decoded.

    Args:
        inputs: (B, Li) right-padded; input_lengths: (B,).
        targets: (B, Lt) right-padded, eos included; target_lengths: (B,).
    Returns:
        ``encoder_input_ids`` (B, Li), ``encoder_lengths`` (B,), ``decoder_input_ids`` (B, Lt) =
        ``[bos] + targets[:-1]`` per example padded with pad_id, ``labels`` (B, Lt) = targets with
        IGNORE_INDEX at padding.
    """
    _check_2d("inputs", inputs)
    _check_2d("targets", targets)
    valid = _positions(target_lengths, targets.shape[1]) < target_lengths.unsqueeze(1)  # (B, Lt)
    shifted = torch.cat([_bos_column(targets, bos_id), targets[:, :-1]], dim=1)  # (B, Lt)
    return {
        "encoder_input_ids": inputs,
        "encoder_lengths": input_lengths,
        "decoder_input_ids": torch.where(valid, shifted, torch.full_like(shifted, pad_id)),
        "labels": torch.where(valid, targets, torch.full_like(targets, IGNORE_INDEX)),
    }


def instruct_decoder_only(
    inputs: torch.Tensor,
    input_lengths: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    bos_id: int,
    pad_id: int,
    pad_to_multiple: int = 64,
    bidirectional_prefix: bool = False,
) -> dict[str, torch.Tensor]:
    """Decoder-only instruction tuning: ``inputs ++ targets`` in one sequence, loss on targets only.

    Per example ``seq = inputs[:li] ++ targets[:ti]``; ``input_ids = [bos] + seq[:-1]`` and
    ``labels = seq`` with IGNORE_INDEX over the ``li`` input positions, both right-padded (pad_id /
    IGNORE_INDEX) to T = max(li + ti) rounded up to a multiple of ``pad_to_multiple``.

    Returns:
        ``input_ids`` (B, T), ``labels`` (B, T) and, when ``bidirectional_prefix``,
        ``prefix_lengths`` (B,) = li + 1 (bos + inputs: the positions that attend bidirectionally).
    """
    _check_2d("inputs", inputs)
    _check_2d("targets", targets)
    if pad_to_multiple < 1:
        raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}")
    li = input_lengths.to(torch.long).unsqueeze(1)  # (B, 1)
    total = li + target_lengths.to(torch.long).unsqueeze(1)  # (B, 1)
    longest = int(total.max()) if total.numel() else 0
    width = max(pad_to_multiple, -(-longest // pad_to_multiple) * pad_to_multiple)
    j = _positions(input_lengths, width)  # (B, T)
    from_inputs = inputs.gather(1, j.clamp(max=inputs.shape[1] - 1)) if inputs.shape[1] else torch.zeros_like(j)
    from_targets = targets.gather(1, (j - li).clamp(0, targets.shape[1] - 1))
    seq = torch.where(j < li, from_inputs, from_targets)  # (B, T): inputs ++ targets (garbage past total)
    valid = j < total  # (B, T)
    labels = torch.where(valid & (j >= li), seq, torch.full_like(seq, IGNORE_INDEX))
    input_ids = torch.cat([_bos_column(seq, bos_id), seq[:, :-1]], dim=1)  # (B, T)
    input_ids = torch.where(valid, input_ids, torch.full_like(input_ids, pad_id))
    out = {"input_ids": input_ids, "labels": labels}
    if bidirectional_prefix:
        out["prefix_lengths"] = input_lengths.to(torch.long) + 1  # (B,)
    return out
