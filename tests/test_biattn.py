"""DecLLM + BiAttn (``bidirectional_prefix``): the prompt is attended bidirectionally wherever the
model is used — training, left-padded batches, cached/uncached generation, checkpoints, evaluation."""
from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_redllm.config import ModelConfig
from lightning_redllm.data.objectives import IGNORE_INDEX, prefix_causal_lm
from lightning_redllm.eval.perplexity import score_sequences
from lightning_redllm.generate import SamplingOptions, generate
from lightning_redllm.models import build_model

pytestmark = pytest.mark.numerics

# the models below compute in fp64 end to end; rows that should be identical differ only by the
# summation order of padded vs unpadded attention (~1e-15 relative): 1e-10 is far below any bug
FP64 = dict(atol=1e-10, rtol=1e-10)


def model(bidirectional_prefix: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(family="decllm", vocab_size=61, d_model=32, n_heads=4, head_dim=8, ffn_dim=64, n_layers=2,
                      max_seq_len=8, bidirectional_prefix=bidirectional_prefix)
    m = build_model(cfg)
    m.init_weights()
    for p in m.parameters():
        p.data += 0.05 * torch.randn_like(p)
    return m.double().eval()


def test_left_padded_prefix_batch_equals_each_row_alone():
    m = model()
    rows = [[1, 5, 6, 7, 8, 9, 10], [1, 12, 13], [1, 14, 15, 16, 17]]
    prefixes = [4, 2, 5]  # bidirectional tokens of each row, counted from its first real token
    width = max(map(len, rows))
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = True
    with torch.no_grad():
        batched = m(ids, attention_mask=mask, prefix_lengths=torch.tensor(prefixes)).logits
        for i, (r, p) in enumerate(zip(rows, prefixes)):
            solo = m(torch.tensor([r]), prefix_lengths=torch.tensor([p])).logits
            torch.testing.assert_close(batched[i, width - len(r):], solo[0], **FP64)
            # and the prefix really is bidirectional: not the causal logits
            assert not torch.allclose(solo, m(torch.tensor([r])).logits)


def _greedy_reference(m, prompt: list[int], n: int, bos: int) -> list[int]:
    """Greedy decoding by re-running the full sequence, prompt (bos + prompt) as the prefix."""
    seq = [bos] + prompt
    out = []
    for _ in range(n):
        with torch.no_grad():
            logits = m(torch.tensor([seq]), prefix_lengths=torch.tensor([len(prompt) + 1])).logits[0, -1]
        nxt = int(logits.argmax())
        out.append(nxt)
        seq.append(nxt)
    return out


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_attends_the_prompt_bidirectionally(use_cache):
    m = model()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15]]
    greedy = SamplingOptions(max_new_tokens=6)
    got = generate(m, prompts, bos_id=1, eos_id=None, options=greedy, use_cache=use_cache)
    for p, row in zip(prompts, got):
        assert row == _greedy_reference(m, p, 6, bos=1)
    # the same weights decoded causally give other first-step logits for a multi-token prompt
    causal = model(bidirectional_prefix=False)
    causal.load_state_dict(m.state_dict())
    with torch.no_grad():
        ids = torch.tensor([[1] + prompts[0]])
        assert not torch.allclose(m(ids, prefix_lengths=torch.tensor([8])).logits[0, -1], causal(ids).logits[0, -1])


def test_checkpoint_records_biattn_and_generate_uses_it(tmp_path):
    from lightning_redllm.cli.commands import load_for_inference
    from lightning_redllm.modules import DecLLMModule

    module = DecLLMModule(preset="decllm-tiny", bidirectional_prefix=True,
                          overrides=dict(d_model=64, n_heads=2, head_dim=32, ffn_dim=128, n_layers=1))
    assert module.config.bidirectional_prefix
    trainer = L.Trainer(accelerator="cpu", max_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    module.configure_model()
    trainer.strategy.connect(module)
    ckpt = tmp_path / "biattn.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded, tok, cfg = load_for_inference(ckpt)
    assert cfg.bidirectional_prefix and loaded.config.bidirectional_prefix
    # a config that cannot hold: RedLLM's encoder is bidirectional already
    with pytest.raises(ValueError, match="bidirectional_prefix"):
        ModelConfig.from_name("redllm-tiny", bidirectional_prefix=True)


def test_evaluation_scores_biattn_like_redllm():
    m = model()
    tokens = torch.randint(2, 61, (3, 12), generator=torch.Generator().manual_seed(0))
    nll, count, _ = score_sequences(m, tokens, bos_id=1, batch_size=2, prefix_len=5)
    assert count == 3 * (12 - 5)  # only the continuation is predicted
    b = prefix_causal_lm(tokens, 5, 1)
    assert (b["labels"][:, :5] == IGNORE_INDEX).all() and b["prefix_lengths"].tolist() == [6, 6, 6]
    with torch.no_grad():
        logp = m(b["input_ids"], prefix_lengths=b["prefix_lengths"]).logits.log_softmax(-1)
    ref = -logp[:, 5:].gather(-1, tokens[:, 5:].unsqueeze(-1)).sum().item()
    assert nll == pytest.approx(ref, rel=1e-10)
