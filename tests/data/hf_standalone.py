"""Load exported folders with transformers alone and generate: run by tests/test_hf_interop.py in a fresh
process where ``import lightning_redllm`` fails, so the folders must stand on their own.

argv[1]: JSON ``[{"dir": ..., "family": ..., "prompts": [[ids]...], "max_new_tokens": n}, ...]``;
prints one JSON line: per folder, the generated token ids (eos excluded) and the tokenizer's ids of a text.
"""
from __future__ import annotations

import importlib
import json
import sys

sys.modules["lightning_redllm"] = None  # any import of it now raises ImportError
try:
    importlib.import_module("lightning_redllm")
except ImportError:
    pass
else:
    raise SystemExit("lightning_redllm is importable: this check would prove nothing")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer  # noqa: E402

out = []
for job in json.loads(sys.argv[1]):
    decllm = job["family"] == "decllm"
    cls = AutoModelForCausalLM if decllm else AutoModelForSeq2SeqLM
    model = cls.from_pretrained(job["dir"], trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(job["dir"], trust_remote_code=True)
    rows = [[tok.bos_token_id] + p for p in job["prompts"]] if decllm else job["prompts"]
    batch = tok.pad({"input_ids": rows}, return_tensors="pt")  # the tokenizer's padding side
    with torch.no_grad():
        gen = model.generate(**batch, max_new_tokens=job["max_new_tokens"], do_sample=False)
    new = gen[:, batch["input_ids"].shape[1]:] if decllm else gen[:, 1:]
    eos = model.generation_config.eos_token_id
    tokens = [r[: r.index(eos)] if eos in r else r for r in new.tolist()]
    out.append({"tokens": tokens, "module": type(model).__module__, "padding_side": tok.padding_side,
                "text_ids": tok(job["text"])["input_ids"]})
print(json.dumps(out))
