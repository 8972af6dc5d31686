"""Text encoder, mPLUG skip-connected fusion, decoder and WordPiece tokenizer (tiny configs)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from copa.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_wordpiece
from copa.models.bert_init import load_bert_weights
from copa.models.decoder import Decoder
from copa.models.fusion import (
    CoAttentionLayer,
    ConnectedAttentionLayer,
    SkipConnectedFusion,
    is_connected_layer,
)
from copa.models.text import TextEncoder

VOCAB, HIDDEN, HEADS, FFN = 50, 32, 4, 64
IMAGE_DIM = 48  # != HIDDEN: exercises the image projection


def text_encoder(num_layers: int = 2, attn_implementation: str = "sdpa") -> TextEncoder:
    return TextEncoder(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=num_layers, num_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=64, dropout=0.0,
        attn_implementation=attn_implementation,
    )


def fusion(num_layers: int = 4, stride: int = 3, image_dim: int = IMAGE_DIM) -> SkipConnectedFusion:
    return SkipConnectedFusion(
        image_dim=image_dim, hidden_size=HIDDEN, num_layers=num_layers, num_heads=HEADS,
        intermediate_size=FFN, stride=stride, dropout=0.0,
    )


def decoder(num_layers: int = 2) -> Decoder:
    return Decoder(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=num_layers, num_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=64, dropout=0.0,
    )


def batch(seed: int = 0, b: int = 2, lt: int = 7, li: int = 5) -> dict[str, torch.Tensor]:
    """Text with padding in sample 1 (last 3 tokens) and image padding in sample 0 (last token)."""
    g = torch.Generator().manual_seed(seed)
    text_mask = torch.ones(b, lt, dtype=torch.long)
    text_mask[1, lt - 3 :] = 0
    image_mask = torch.ones(b, li, dtype=torch.long)
    image_mask[0, li - 1] = 0
    return {
        "input_ids": torch.randint(5, VOCAB, (b, lt), generator=g),
        "text_mask": text_mask,
        "image": torch.randn(b, li, IMAGE_DIM, generator=g),
        "image_mask": image_mask,
    }


# --- shapes ---------------------------------------------------------------------------------


def test_shapes_of_every_module() -> None:
    torch.manual_seed(0)
    x = batch()
    enc, fus, dec = text_encoder().eval(), fusion().eval(), decoder().eval()
    text = enc(x["input_ids"], x["text_mask"])
    assert text.shape == (2, 7, HIDDEN)
    image_out, text_out = fus(x["image"], x["image_mask"], text, x["text_mask"])
    assert image_out.shape == (2, 5, HIDDEN) and text_out.shape == (2, 7, HIDDEN)
    states = torch.cat([image_out, text_out], dim=1)
    mask = torch.cat([x["image_mask"], x["text_mask"]], dim=1)
    logits = dec(x["input_ids"][:, :4], torch.ones(2, 4, dtype=torch.long), states, mask)
    assert logits.shape == (2, 4, VOCAB)
    for t in (text, image_out, text_out, logits):
        assert torch.isfinite(t).all()


def test_equal_widths_skip_the_image_projection() -> None:
    assert isinstance(fusion(image_dim=HIDDEN).image_proj, torch.nn.Identity)
    assert not isinstance(fusion(image_dim=IMAGE_DIM).image_proj, torch.nn.Identity)


# --- BERT weight loading -----------------------------------------------------------------------


def small_bert(num_layers: int = 4) -> BertModel:
    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=num_layers,
        num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=64, attn_implementation="eager",
    )
    return BertModel(config).eval()


@pytest.mark.parametrize(("prefix", "attn"), [("", "eager"), ("bert.", "eager"), ("", "sdpa")])
def test_text_encoder_reproduces_bert_hidden_states(prefix: str, attn: str) -> None:
    bert = small_bert(num_layers=4)  # eager attention; split 2 (text encoder) + 2 (fusion)
    state = {prefix + k: v for k, v in bert.state_dict().items()}
    enc, fus = text_encoder(2, attn).eval(), fusion(2, stride=6).eval()
    missing = load_bert_weights(enc, fus, state)
    # Only what BERT has no weights for stays fresh: the cross-attention and the image projection.
    fresh = {
        n for n, _ in fus.named_parameters()
        if n.startswith("image_proj.") or ".crossattention." in n
    }
    assert set(missing) == fresh and fresh
    x = batch()
    with torch.no_grad():
        ref = bert(x["input_ids"], x["text_mask"], output_hidden_states=True).hidden_states
        ours = enc(x["input_ids"], x["text_mask"])
    # BERT's hidden states after layer 2, padding included: bit-identical with the same backend.
    if attn == "eager":
        assert torch.equal(ours, ref[2])
    else:
        torch.testing.assert_close(ours, ref[2])
    bert_layers = bert.encoder.layer
    for j, layer in enumerate(fus.layers):  # fusion layer j is BERT layer 2 + j
        for name, param in layer.named_parameters():
            if not name.startswith("crossattention."):
                assert torch.equal(param, bert_layers[2 + j].get_parameter(name)), name


def test_load_bert_weights_rejects_a_layer_count_mismatch() -> None:
    with pytest.raises(ValueError, match="exactly layers 0..3"):
        load_bert_weights(text_encoder(2), fusion(2), small_bert(num_layers=3).state_dict())


# --- fusion semantics --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_layers", "stride", "connected"),
    [(6, 3, [3]), (6, 6, []), (6, 1, [1, 2, 3, 4, 5]), (4, 10, []), (6, 2, [2, 4])],
)
def test_stride_places_connected_layers(num_layers: int, stride: int, connected: list[int]) -> None:
    fus = fusion(num_layers, stride)
    kinds = [type(layer) for layer in fus.layers]
    assert [n for n, k in enumerate(kinds) if k is ConnectedAttentionLayer] == connected
    assert kinds.count(CoAttentionLayer) == num_layers - len(connected)
    assert [n for n in range(num_layers) if is_connected_layer(n, stride)] == connected


def test_co_attention_only_leaves_image_tokens_unchanged() -> None:
    fus = fusion(num_layers=3, stride=6, image_dim=HIDDEN).eval()
    x = batch()
    image = torch.randn(2, 5, HIDDEN)
    with torch.no_grad():
        image_out, _ = fus(image, x["image_mask"], torch.randn(2, 7, HIDDEN), x["text_mask"])
    assert torch.equal(image_out, image)


def test_connected_layer_updates_image_tokens_through_a_skip() -> None:
    # stride 1: layer 0 co-attention, layer 1 connected
    fus = fusion(num_layers=2, stride=1, image_dim=HIDDEN).eval()
    image, text = torch.randn(2, 5, HIDDEN), torch.randn(2, 7, HIDDEN)
    no_pad = torch.zeros(2, 1, 1, 12)  # additive mask over the 5 + 7 joint tokens, nothing padded
    with torch.no_grad():
        image_out, text_out = fus(image, torch.ones(2, 5), text, torch.ones(2, 7))
        _, text_0 = fus.layers[0](image, no_pad[..., :5], text, no_pad[..., 5:])
        layer = fus.layers[1]
        joint, _ = layer.attention(torch.cat([image, text_0], dim=1), attention_mask=no_pad)
        joint = layer.output(layer.intermediate(joint), joint)
    # mPLUG: the joint output's image part is added to the image input (skip); its text part
    # replaces the text.
    torch.testing.assert_close(image_out, image + joint[:, :5])
    torch.testing.assert_close(text_out, joint[:, 5:])


@pytest.mark.parametrize("stride", [1, 3, 6])
def test_fusion_ignores_padded_tokens(stride: int) -> None:
    torch.manual_seed(0)
    fus = fusion(num_layers=4, stride=stride).eval()
    x = batch()
    text = torch.randn(2, 7, HIDDEN)
    text2, image2 = text.clone(), x["image"].clone()
    text2[1, -3:] = 100.0 * torch.randn(3, HIDDEN)  # padded text tokens of sample 1
    image2[0, -1] = 100.0 * torch.randn(IMAGE_DIM)  # padded image token of sample 0
    with torch.no_grad():
        img_a, txt_a = fus(x["image"], x["image_mask"], text, x["text_mask"])
        img_b, txt_b = fus(image2, x["image_mask"], text2, x["text_mask"])
    t_valid, i_valid = x["text_mask"].bool(), x["image_mask"].bool()
    torch.testing.assert_close(txt_a[t_valid], txt_b[t_valid])
    torch.testing.assert_close(img_a[i_valid], img_b[i_valid])
    assert not torch.allclose(txt_a, txt_b)  # the change did reach the padded positions


def test_fusion_rejects_bad_stride() -> None:
    with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
        fusion(stride=0)


# --- decoder ----------------------------------------------------------------------------------


def test_decoder_is_causal() -> None:
    torch.manual_seed(0)
    dec = decoder().eval()
    states, mask = torch.randn(2, 6, HIDDEN), torch.ones(2, 6, dtype=torch.long)
    ids = torch.randint(5, VOCAB, (2, 8))
    ids2 = ids.clone()
    ids2[:, 5:] = torch.randint(5, VOCAB, (2, 3))
    ones = torch.ones(2, 8, dtype=torch.long)
    with torch.no_grad():
        a, b = dec(ids, ones, states, mask), dec(ids2, ones, states, mask)
        prefix = dec(ids[:, :5], ones[:, :5], states, mask)  # step-style use: a shorter prefix
    torch.testing.assert_close(a[:, :5], b[:, :5])
    torch.testing.assert_close(a[:, :5], prefix)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_decoder_respects_encoder_padding_and_ties_embeddings() -> None:
    torch.manual_seed(0)
    dec = decoder().eval()
    assert dec.head.decoder.weight is dec.embeddings.word_embeddings.weight
    untied = Decoder(vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=1, num_heads=HEADS,
                     intermediate_size=FFN, tie_word_embeddings=False)
    assert untied.head.decoder.weight is not untied.embeddings.word_embeddings.weight
    states, mask = torch.randn(1, 6, HIDDEN), torch.tensor([[1, 1, 1, 1, 0, 0]])
    states2 = states.clone()
    states2[0, 4:] = 50.0
    ids, ones = torch.randint(5, VOCAB, (1, 4)), torch.ones(1, 4, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(dec(ids, ones, states, mask), dec(ids, ones, states2, mask))


def test_decoder_loss_reaches_fusion_and_text_encoder() -> None:
    torch.manual_seed(0)
    enc, fus, dec = text_encoder(), fusion(num_layers=4, stride=3), decoder()
    x = batch()
    text = enc(x["input_ids"], x["text_mask"])
    image_out, text_out = fus(x["image"], x["image_mask"], text, x["text_mask"])
    states = torch.cat([image_out, text_out], dim=1)
    mask = torch.cat([x["image_mask"], x["text_mask"]], dim=1)
    target = torch.randint(5, VOCAB, (2, 6))
    logits = dec(target[:, :-1], torch.ones(2, 5, dtype=torch.long), states, mask)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), target[:, 1:].reshape(-1))
    loss.backward()
    for name, module in (("text", enc), ("fusion", fus), ("decoder", dec)):
        no_grad = [n for n, p in module.named_parameters() if p.grad is None]
        assert not no_grad, f"{name} parameters without gradient: {no_grad}"
        assert any(p.grad.abs().sum() > 0 for p in module.parameters())


# --- tokenizer --------------------------------------------------------------------------------

CAPTION = "a small red circle to the left of a striped blue square."


def captions(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    sizes, colours = ["small", "large", "tiny"], ["red", "blue", "green", "yellow"]
    textures, shapes = ["striped", "dotted", "plain"], ["circle", "square", "triangle", "star"]
    relations = ["to the left of", "to the right of", "above", "below"]
    return [
        f"a {rng.choice(sizes)} {rng.choice(colours)} {rng.choice(shapes)} {rng.choice(relations)} "
        f"a {rng.choice(textures)} {rng.choice(colours)} {rng.choice(shapes)}."
        for _ in range(n)
    ] + [CAPTION]


def test_wordpiece_vocab_is_deterministic(tmp_path: Path) -> None:
    a = train_wordpiece(captions(), 80, tmp_path / "a")
    b = train_wordpiece(iter(captions()), 80, tmp_path / "b")  # any iterable
    assert a.name == "vocab.txt"
    assert a.read_bytes() == b.read_bytes()
    lines = a.read_text(encoding="utf-8").splitlines()
    assert tuple(lines[:5]) == SPECIAL_TOKENS and len(lines) <= 80 and len(set(lines)) == len(lines)


def test_tokenizer_round_trip_and_special_ids(tmp_path: Path) -> None:
    tok = load_tokenizer(train_wordpiece(captions(), 200, tmp_path))
    reported = (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id,
                tok.mask_token_id)
    assert reported == (0, 1, 2, 3, 4)
    assert tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3, 4]
    ids = tok(CAPTION)["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == CAPTION
    lowered = tok.decode(tok("A Small RED circle.")["input_ids"], skip_special_tokens=True)
    assert lowered == "a small red circle."
    padded = tok(["a red star.", CAPTION], padding=True)
    assert padded["input_ids"][0][-1] == tok.pad_token_id and padded["attention_mask"][0][-1] == 0


def test_vocab_too_small_for_the_alphabet(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size=8"):
        train_wordpiece(captions(), 8, tmp_path)


def test_from_scratch_parts_start_with_berts_initialisation():
    """BERT's N(0, 0.02) (not PyTorch's N(0, 1) embeddings): a fresh decoder's logits are small,
    so its first loss is near ln(V), not several times it."""
    import math

    from copa.models.decoder import Decoder
    from copa.models.objectives.language import lm_loss

    torch.manual_seed(0)
    decoder = Decoder(vocab_size=1000, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    assert abs(float(decoder.embeddings.word_embeddings.weight.detach().std()) - 0.02) < 0.002
    ids = torch.randint(5, 1000, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    with torch.no_grad():
        logits = decoder(ids, mask, torch.randn(2, 5, 64), torch.ones(2, 5, dtype=torch.long))
    assert float(logits.std()) < 1.0
    assert abs(float(lm_loss(logits, ids, mask)) - math.log(1000)) < 0.5
