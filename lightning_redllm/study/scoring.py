"""Instruction data and scoring: the FLAN-format jsonl splits, target loss per (input, target) pair
scored the way each family is instruction-tuned, and zero-shot multiple-choice accuracy."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Optional, Sequence


def read_flan(split: str, corpus: Optional[dict] = None) -> list[dict]:
    """The FLAN-format jsonl(.zst) of a split (default: the bundled set)."""
    import zstandard

    path = Path((corpus or {}).get(split) or _bundled_flan(split))
    raw = path.read_bytes()
    if path.suffix == ".zst":
        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]


def _bundled_flan(split: str) -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("lightning_redllm.assets"))) / "corpus" / "flan" / f"{split}.jsonl.zst"


def score_pairs(model, tok, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 16) -> list[tuple[float, int]]:
    """(summed target NLL, target tokens) per (input ids, target ids incl. eos), scored the way
    each family is instruction-tuned (``objectives.instruct_*``)."""
    import torch

    from ..data.instruct import InstructCollator
    from ..data.objectives import instruct_decoder_only, instruct_encoder_decoder
    from ..models import RedLLM

    device = model.embed.weight.device
    coll = InstructCollator(tok.pad_id, 8)
    out = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            items = [{"inputs": torch.tensor(i or [tok.pad_id]), "targets": torch.tensor(t)}
                     for i, t in pairs[start:start + batch_size]]
            b = {k: v.to(device) for k, v in coll(items).items()}
            if isinstance(model, RedLLM):
                x = instruct_encoder_decoder(b["inputs"], b["input_lengths"], b["targets"], b["target_lengths"],
                                             tok.bos_id, tok.pad_id)
                logits = model(x["encoder_input_ids"], x["decoder_input_ids"], encoder_lengths=x["encoder_lengths"],
                               return_logits=True).logits
            else:
                x = instruct_decoder_only(b["inputs"], b["input_lengths"], b["targets"], b["target_lengths"], tok.bos_id,
                                          tok.pad_id, pad_to_multiple=8,
                                          bidirectional_prefix=model.config.bidirectional_prefix)
                logits = model(x["input_ids"], prefix_lengths=x.get("prefix_lengths"), return_logits=True).logits
            labels = x["labels"]
            nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100,
                                                    reduction="none")  # (B, T)
            valid = labels != -100
            out += [(float(nll[i][valid[i]].sum()), int(valid[i].sum())) for i in range(labels.shape[0])]
    return out


def options_of(inputs: str) -> list[str]:
    tail = inputs.split("OPTIONS:", 1)[1]
    return [ln[2:].strip() for ln in tail.splitlines() if ln.startswith("- ")]


def option_accuracy(model, tok, rows: Sequence[dict]) -> float:
    """Zero-shot multiple choice: the option whose tokens (+ eos) get the lowest summed NLL."""
    correct = 0
    for r in rows:
        opts = options_of(r["inputs"])
        inp = tok.encode(r["inputs"])[:256]
        scores = score_pairs(model, tok, [(inp, tok.encode(o) + [tok.eos_id]) for o in opts])
        pick = min(range(len(opts)), key=lambda i: scores[i][0])
        correct += int(opts[pick].strip() == r["targets"].strip())
    return correct / len(rows)
