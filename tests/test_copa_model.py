"""The composed COPA model at a tiny size: every part wired, shapes right, and the objectives'
gradients reaching the Text-aware Patch Detector (PTA through its scores, ITM through fusion)."""

import pytest
import torch

from copa.models.copa import CopaModel, CopaSpec
from copa.models.objectives.itm import itm_loss
from copa.models.objectives.language import lm_loss
from copa.models.objectives.pta import pta_loss

TINY = dict(
    vocab_size=50, image_size=64, patch_size=16, vision_dim=32, vision_depth=4, vision_heads=2,
    text_dim=48, text_heads=2, text_intermediate=64, text_layers=2, fusion_layers=3, decoder_layers=2,
    max_text_length=32, embed_dim=16,
)


def _batch(b=3, length=7):
    torch.manual_seed(0)
    images = torch.randn(b, 3, 64, 64)
    ids = torch.randint(5, 50, (b, length))
    ids[:, 0] = 2
    mask = torch.ones(b, length, dtype=torch.long)
    mask[0, -2:] = 0
    return images, ids, mask


@pytest.mark.parametrize(
    "selection, location, tokens",
    [("none", 2, 1 + 16), ("tpd", 2, 1 + 8 + 1), ("cls_attention", 2, 1 + 8 + 1), ("text_attention", (1, 3), None)],
)
def test_every_part_is_wired(selection, location, tokens):
    model = CopaModel(CopaSpec(**TINY, selection=selection, location=location))
    images, ids, mask = _batch()
    text = model.encode_text(ids, mask)  # (B, L, H)
    image = model.encode_image(images, text[:, 0])
    if tokens is not None:
        assert image["tokens"].shape == (3, tokens, 32)
    assert (image["scores"] is not None) == (selection == "tpd")
    fused_image, fused_text = model.fuse(image["tokens"], text, mask)
    assert fused_image.shape[:2] == image["tokens"].shape[:2] and fused_text.shape == (3, 7, 48)
    assert model.image_feature(image["tokens"]).norm(dim=-1).allclose(torch.ones(3))
    assert model.text_feature(text).shape == (3, 16)
    assert model.itm_logits(fused_text).shape == (3, 2) and model.mlm_logits(fused_text).shape == (3, 7, 50)
    assert model.decode(ids, mask, fused_image, fused_text, mask).shape == (3, 7, 50)


def test_gradients_reach_the_detector_from_pta_and_from_the_fusion():
    model = CopaModel(CopaSpec(**TINY, selection="tpd", location=2))
    images, ids, mask = _batch()
    text = model.encode_text(ids, mask)
    image = model.encode_image(images, text[:, 0])
    detector = list(model.vision.selector.parameters())  # the TPD's three-layer MLP
    assert len(detector) == 6
    labels = (torch.rand(3, 16) > 0.5).float()
    pta_loss(image["scores"], labels).backward(retain_graph=True)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in detector)
    model.zero_grad()
    _, fused_text = model.fuse(image["tokens"], text, mask)
    (itm_loss(model.itm_logits(fused_text), torch.tensor([1, 0, 1])) + lm_loss(model.decode(ids, mask, *model.fuse(image["tokens"], text, mask), mask), ids, mask)).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in detector)  # through the fused token's weights
    assert model.text.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_warm_up_selects_without_the_detector():
    model = CopaModel(CopaSpec(**TINY, selection="tpd", location=2)).eval()
    images, ids, mask = _batch()
    text = model.encode_text(ids, mask)
    warm = model.encode_image(images, text[:, 0], use_detector=False, need_scores=True)
    other = model.encode_image(images, torch.randn_like(text[:, 0]), use_detector=False)
    assert torch.equal(warm["kept"], other["kept"])  # [CLS] attention ignores the text...
    assert warm["scores"] is not None  # ...while the detector still scores when asked, for PTA
    assert other["scores"] is None  # and not otherwise


def _initialised_weights(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every Linear's and Embedding's weight of ``module``, by name."""
    return [(f"{name}.weight", m.weight.detach()) for name, m in module.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) and m.weight.numel() >= 256]


def test_model_init_std_sets_the_bert_parts_and_leaves_the_vit() -> None:
    """params model.init_std reaches each weight of the parts built from BERT's (text encoder, fusion, decoder and
    MLM head; a single-stream model's text embeddings, pooler and heads, its VQA classifier's); the ViT keeps timm's."""
    from pathlib import Path

    from copa.config import load_params
    from copa.models.single_stream import SingleStreamModel
    from copa.tasks.single_stream_vqa import VQAClassifier
    from copa.train.build import copa_spec, single_stream_spec

    params_dir = Path(__file__).parents[1] / "params"
    for std in (0.02, 0.1):
        params = load_params("fixture", [f"model.init_std={std}"], params_dir=params_dir)
        torch.manual_seed(0)
        model = CopaModel(copa_spec(params, 400))
        single = SingleStreamModel(single_stream_spec(params, 400))
        parts = (model.text, model.fusion, model.decoder, model.mlm_head, single.text_embeddings, single.pooler, single.mlm_head,
                 VQAClassifier(single, 24).head)
        weights = [w for part in parts for w in _initialised_weights(part)]
        assert len(weights) > 20
        for name, weight in weights:
            assert float(weight.std()) == pytest.approx(std, rel=0.25), name
        for name, weight in _initialised_weights(model.vision.blocks):
            assert float(weight.std()) == pytest.approx(0.02, rel=0.25), name


def test_model_dropout_sets_every_dropout_of_the_bert_parts() -> None:
    """params model.dropout reaches every dropout of the parts built from BERT's (hidden and attention: transformers'
    sdpa attention reads its module's p) in a COPA and a single-stream model; the ViT's stay at timm's 0, and at 0 two forward
    passes in training mode agree where at BERT's 0.1 they differ."""
    from pathlib import Path

    from copa.config import load_params
    from copa.models.single_stream import SingleStreamModel
    from copa.train.build import copa_spec, single_stream_spec

    params_dir = Path(__file__).parents[1] / "params"
    images, ids, mask = _batch()
    for p in (0.0, 0.3):  # neither BERT's 0.1
        params = load_params("fixture", [f"model.dropout={p}"], params_dir=params_dir)
        torch.manual_seed(0)
        model = CopaModel(copa_spec(params, 400))
        single = SingleStreamModel(single_stream_spec(params, 400))
        bert_parts = (model.text, model.fusion, model.decoder, single.text_embeddings)  # their MLM heads have none
        dropouts = [m for part in bert_parts for m in part.modules() if isinstance(m, torch.nn.Dropout)]
        assert len(dropouts) > 20
        assert {m.p for m in dropouts} == {p}
        assert {m.p for m in model.vision.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
        model.train()
        twice = [model.text(ids, mask) for _ in range(2)]
        assert torch.equal(*twice) == (p == 0.0)
