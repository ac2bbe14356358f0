"""Objectives: hand-computed small cases, label masking, no target token lost."""
import pytest
import torch

from lightning_redllm.data.objectives import (
    IGNORE_INDEX,
    causal_lm,
    instruct_decoder_only,
    instruct_encoder_decoder,
    prefix_lm,
)

BOS, PAD = 2, 0
I = IGNORE_INDEX


def test_causal_lm_exact():
    tokens = torch.tensor([[10, 11, 12, 3], [20, 3, 21, 22]])
    out = causal_lm(tokens, BOS)
    assert out["input_ids"].tolist() == [[2, 10, 11, 12], [2, 20, 3, 21]]
    assert out["labels"].tolist() == tokens.tolist()


def test_prefix_lm_exact():
    tokens = torch.tensor([[10, 11, 12, 13, 14, 3], [20, 21, 3, 22, 23, 24]])
    out = prefix_lm(tokens, 2, BOS)
    assert out["encoder_input_ids"].tolist() == [[10, 11], [20, 21]]
    assert out["encoder_lengths"].tolist() == [2, 2]
    assert out["encoder_lengths"].dtype == torch.long
    assert out["decoder_input_ids"].tolist() == [[2, 12, 13, 14], [2, 3, 22, 23]]
    assert out["labels"].tolist() == [[12, 13, 14, 3], [3, 22, 23, 24]]
    # every token is either encoder input or a target, exactly once
    assert torch.equal(torch.cat([out["encoder_input_ids"], out["labels"]], 1), tokens)


@pytest.mark.parametrize("p", [0, 6, -1, 7])
def test_prefix_lm_bad_split(p):
    with pytest.raises(ValueError, match="prefix_len"):
        prefix_lm(torch.zeros(2, 6, dtype=torch.long), p, BOS)


def test_instruct_encoder_decoder_exact():
    inputs = torch.tensor([[5, 6, 7, PAD], [8, PAD, PAD, PAD]])
    input_lengths = torch.tensor([3, 1])
    targets = torch.tensor([[30, 31, 3, PAD], [40, 3, PAD, PAD]])  # eos = 3 included
    target_lengths = torch.tensor([3, 2])
    out = instruct_encoder_decoder(inputs, input_lengths, targets, target_lengths, BOS, PAD)
    assert torch.equal(out["encoder_input_ids"], inputs)
    assert torch.equal(out["encoder_lengths"], input_lengths)
    assert out["decoder_input_ids"].tolist() == [[2, 30, 31, PAD], [2, 40, PAD, PAD]]
    assert out["labels"].tolist() == [[30, 31, 3, I], [40, 3, I, I]]


def test_instruct_decoder_only_exact():
    inputs = torch.tensor([[5, 6, 7, PAD], [8, PAD, PAD, PAD]])
    input_lengths = torch.tensor([3, 1])
    targets = torch.tensor([[30, 31, 3, PAD], [40, 3, PAD, PAD]])
    target_lengths = torch.tensor([3, 2])
    out = instruct_decoder_only(inputs, input_lengths, targets, target_lengths, BOS, PAD, pad_to_multiple=4)
    # seq0 = 5 6 7 30 31 3 (len 6 -> padded to 8); seq1 = 8 40 3 (len 3)
    assert out["input_ids"].tolist() == [[2, 5, 6, 7, 30, 31, PAD, PAD], [2, 8, 40, PAD, PAD, PAD, PAD, PAD]]
    assert out["labels"].tolist() == [[I, I, I, 30, 31, 3, I, I], [I, 40, 3, I, I, I, I, I]]
    assert "prefix_lengths" not in out
    out = instruct_decoder_only(inputs, input_lengths, targets, target_lengths, BOS, PAD, 4, bidirectional_prefix=True)
    assert out["prefix_lengths"].tolist() == [4, 2]


def test_instruct_decoder_only_default_padding_and_no_target_lost():
    g = torch.Generator().manual_seed(0)
    B, Li, Lt = 5, 64, 64
    input_lengths = torch.randint(0, Li + 1, (B,), generator=g)
    target_lengths = torch.randint(1, Lt + 1, (B,), generator=g)
    inputs = torch.randint(4, 100, (B, Li), generator=g)
    targets = torch.randint(4, 100, (B, Lt), generator=g)
    out = instruct_decoder_only(inputs, input_lengths, targets, target_lengths, BOS, PAD)
    T = out["input_ids"].shape[1]
    assert T % 64 == 0 and T >= int((input_lengths + target_lengths).max())
    for b in range(B):
        li, ti = int(input_lengths[b]), int(target_lengths[b])
        labels = out["labels"][b]
        assert labels[labels != I].tolist() == targets[b, :ti].tolist()  # every target token, in order
        seq = torch.cat([inputs[b, :li], targets[b, :ti]])
        assert out["input_ids"][b, : li + ti].tolist() == [BOS] + seq[:-1].tolist()
        assert (out["input_ids"][b, li + ti :] == PAD).all()
        # next-token alignment: the label at j is the input at j + 1
        assert labels[li : li + ti - 1].tolist() == out["input_ids"][b, li + 1 : li + ti].tolist()


def test_encoder_decoder_no_target_lost():
    targets = torch.tensor([[7, 8, 9, 3], [4, 3, PAD, PAD]])
    target_lengths = torch.tensor([4, 2])
    out = instruct_encoder_decoder(targets, target_lengths, targets, target_lengths, BOS, PAD)
    for b in range(2):
        labels = out["labels"][b]
        assert labels[labels != I].tolist() == targets[b, : target_lengths[b]].tolist()
