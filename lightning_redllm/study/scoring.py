"""Instruction data and scoring: the FLAN-format jsonl splits, target loss per (input, target) pair
scored the way each family is instruction-tuned, zero-shot multiple-choice accuracy, and the per-task
evaluation both the tuned models (``eval/instruct``) and the pretrained ones (``eval/zero_shot``) get."""
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


def evaluation_tasks(ins: dict, max_examples: int) -> tuple[dict[str, list[dict]], set]:
    """{task: rows} of the instruction set (validation split; held-out tasks: every example of both
    splits, never trained on), at most ``max_examples`` per task, and the held-out task names."""
    held = set(ins.get("held_out_tasks") or [])
    tasks: dict[str, list[dict]] = {}
    for r in read_flan("val", ins.get("corpus")) + [r for r in read_flan("train", ins.get("corpus"))
                                                    if r["task_name"] in held]:
        tasks.setdefault(r["task_name"], []).append(r)
    return {t: rs[:max_examples] for t, rs in sorted(tasks.items())}, held


def task_scores(model, tok, tasks: dict[str, list[dict]], held: set) -> dict:
    """Per task: target loss per token (inputs <= 256 tokens, targets <= 127 + eos), and for a
    multiple-choice task its accuracy and chance level; then the mean over seen and held-out tasks."""
    entry: dict = {"tasks": {}}
    for task, rows in tasks.items():
        ids = [(tok.encode(r["inputs"])[:256], tok.encode(r["targets"])[:127] + [tok.eos_id]) for r in rows]
        nll = score_pairs(model, tok, ids)
        entry["tasks"][task] = {"examples": len(rows), "held_out": task in held,
                                "loss": sum(a for a, _ in nll) / sum(n for _, n in nll)}
        mc = [r for r in rows if "OPTIONS:" in r["inputs"]]
        if mc:
            entry["tasks"][task]["mc_accuracy"] = option_accuracy(model, tok, mc)
            entry["tasks"][task]["mc_chance"] = sum(1 / len(options_of(r["inputs"])) for r in mc) / len(mc)
    seen = [v["loss"] for v in entry["tasks"].values() if not v["held_out"]]
    unseen = [v["loss"] for v in entry["tasks"].values() if v["held_out"]]
    entry["seen_loss"] = sum(seen) / len(seen) if seen else None
    entry["held_out_loss"] = sum(unseen) / len(unseen) if unseen else None
    entry["all_loss"] = sum(seen + unseen) / len(seen + unseen) if seen + unseen else None
    accs = [v["mc_accuracy"] for v in entry["tasks"].values() if "mc_accuracy" in v]
    entry["mc_accuracy"] = sum(accs) / len(accs) if accs else None
    return entry
