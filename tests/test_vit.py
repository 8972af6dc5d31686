"""VisionEncoder and token selectors: timm equivalence, selection rules, gradients, shapes."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from hypothesis import given
from hypothesis import strategies as st
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer

from copa.models.selectors import (
    SELECTORS,
    ClsAttentionSelector,
    TextAwarePatchDetector,
    build_selector,
    num_keep,
    select_and_fuse,
)
from copa.models.vit import VisionEncoder, load_timm_checkpoint, load_timm_state_dict

D, DEPTH, HEADS = 64, 4, 4
SMALL = dict(img_size=64, patch_size=16, embed_dim=D, depth=DEPTH, num_heads=HEADS)  # n = 16


@pytest.fixture(scope="module")
def timm_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(**SMALL).eval()


def encoder(name: str, location=2, timm_model=None, **options) -> VisionEncoder:
    model = VisionEncoder(build_selector(name, D, **options), location, **SMALL).eval()
    if timm_model is not None:
        load_timm_state_dict(model, timm_model.state_dict())
    return model


def unfused(model: torch.nn.Module) -> torch.nn.Module:
    """The same model with timm's explicit (non-SDPA) attention, the path the selectors use."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.fused_attn = False
    return model


def images(batch: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def text(batch: int = 2, dim: int = D, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed))


# --- timm equivalence ------------------------------------------------------------------------

@torch.no_grad()
@pytest.mark.parametrize("name, options", [
    ("none", {}), ("tpd", {"keep_ratio": 1.0}), ("cls_attention", {"keep_ratio": 1.0}),
])
def test_no_reduction_equals_timm_forward_features(timm_vit, name, options):
    model = encoder(name, timm_model=timm_vit, **options)
    out = model(images(), text())
    # cls_attention runs its layer through the explicit attention: compare with timm's own
    # explicit path (SDPA differs by float rounding, checked loosely below)
    reference = unfused(copy.deepcopy(timm_vit)) if name == "cls_attention" else timm_vit
    expected = reference.forward_features(images())
    assert out["tokens"].shape == (2, 17, D)
    assert torch.allclose(out["tokens"], expected, atol=1e-6)
    assert torch.equal(out["kept"], torch.arange(16).expand(2, 16))
    assert torch.allclose(out["tokens"], timm_vit.forward_features(images()), atol=1e-5)


@torch.no_grad()
def test_loads_timm_vit_tiny_and_matches():
    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    model = VisionEncoder(build_selector("none", 192), 6, embed_dim=192, num_heads=3).eval()
    load_timm_state_dict(model, reference.state_dict())
    x = torch.randn(1, 3, 224, 224)
    assert torch.allclose(model(x)["tokens"], reference.forward_features(x), atol=1e-6)


def test_load_timm_checkpoint_files(tmp_path, timm_vit):
    from safetensors.torch import save_file
    torch.save(timm_vit.state_dict(), tmp_path / "vit.pth")
    save_file(timm_vit.state_dict(), tmp_path / "vit.safetensors")
    for name in ("vit.pth", "vit.safetensors"):
        model = encoder("none")
        load_timm_checkpoint(model, tmp_path / name)
        assert torch.equal(model.pos_embed, timm_vit.pos_embed)


def test_load_rejects_a_different_architecture(timm_vit):
    state = dict(timm_vit.state_dict())
    del state["blocks.3.mlp.fc2.bias"]
    with pytest.raises(KeyError, match="blocks.3.mlp.fc2.bias"):
        load_timm_state_dict(encoder("tpd"), state)


# --- K, output length, fusion, order -----------------------------------------------------------

@pytest.mark.parametrize("n, ratio, rounding, expected", [
    (196, 0.1, "round", 20), (196, 0.3, "round", 59), (196, 0.5, "round", 98),
    (196, 0.7, "round", 137), (196, 0.7, "ceil", 138), (196, 0.1, "floor", 19),
    (10, 0.7, "ceil", 7), (10, 0.25, "round", 3), (16, 1.0, "round", 16),
])
def test_num_keep(n, ratio, rounding, expected):
    assert num_keep(n, ratio, rounding) == expected


@given(n=st.integers(1, 600), ratio=st.floats(0.01, 1.0))
def test_num_keep_bounds(n, ratio):
    for rounding in ("floor", "round", "ceil"):
        assert 0 <= num_keep(n, ratio, rounding) <= n
    assert num_keep(n, ratio, "floor") <= num_keep(n, ratio, "round") <= num_keep(n, ratio, "ceil")


@torch.no_grad()
@pytest.mark.parametrize("size", [64, 96])  # n = 16, 36 (position embeddings resampled at 96)
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.7])
@pytest.mark.parametrize("name", ["tpd", "cls_attention"])
def test_output_length(size, ratio, name):
    n = (size // 16) ** 2
    k = num_keep(n, ratio, "round")
    out = encoder(name, keep_ratio=ratio)(images(size=size), text())
    assert out["tokens"].shape == (2, 1 + k + 1, D)
    assert out["kept"].shape == (2, k)
    assert (out["scores"].shape == (2, n)) if name == "tpd" else out["scores"] is None


def test_fused_token_is_softmax_weighted_sum_of_dropped():
    x = torch.randn(1, 1 + 5, 3)
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.7]])
    out = select_and_fuse(x, scores, keep=2, keep_order=True, fusion="softmax")
    assert out.kept.tolist() == [[0, 4]]
    dropped = [1, 2, 3]  # scores 0.1, 0.5, 0.3
    w = torch.softmax(torch.tensor([0.1, 0.5, 0.3]), dim=0)
    expected = sum(w[j] * x[0, 1 + i] for j, i in enumerate(dropped))
    assert torch.allclose(out.tokens[0, -1], expected)
    assert torch.equal(out.tokens[0, :3], x[0, [0, 1, 5]])  # [CLS], patches 0 and 4


@pytest.mark.parametrize("fusion, weights", [
    ("raw", [0.1, 0.5, 0.3]), ("normalized", [0.1 / 0.9, 0.5 / 0.9, 0.3 / 0.9]),
])
def test_other_fusion_weights(fusion, weights):
    x = torch.randn(1, 1 + 5, 3)
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.7]])
    fused = select_and_fuse(x, scores, 2, True, fusion).tokens[0, -1]
    assert torch.allclose(fused, sum(w * x[0, 1 + i] for w, i in zip(weights, [1, 2, 3])))


def test_drop_fusion_and_keep_order_false():
    x = torch.randn(1, 1 + 5, 3)
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.7]])
    out = select_and_fuse(x, scores, 3, keep_order=False, fusion="drop")
    assert out.kept.tolist() == [[0, 4, 2]]  # by decreasing score
    assert torch.equal(out.tokens[0], x[0, [0, 1, 5, 3]])


@torch.no_grad()
def test_tpd_keeps_top_k_scores_in_spatial_order():
    out = encoder("tpd", keep_ratio=0.5)(images(batch=3), text(batch=3))
    top = out["scores"].topk(8, dim=1).indices.sort(dim=1).values
    assert torch.equal(out["kept"], top)
    assert bool((out["kept"].diff(dim=1) > 0).all())


@torch.no_grad()
def test_tpd_score_is_the_mlp_on_the_concatenation():
    tpd = TextAwarePatchDetector(D, text_dim=24, hidden_dim=20)
    patches, text_cls = torch.randn(3, 16, D), torch.randn(3, 24)
    v_dot = torch.cat([patches, text_cls[:, None].expand(-1, 16, -1)], dim=-1)  # COPA: concat(v_i, t_cls)
    expected = torch.sigmoid(tpd.mlp(v_dot)).squeeze(-1)
    torch.testing.assert_close(tpd.score(patches, text_cls), expected, rtol=1e-5, atol=1e-6)


# --- gradients ---------------------------------------------------------------------------------

def mlp_grads(tpd: TextAwarePatchDetector) -> list[torch.Tensor | None]:
    return [p.grad for p in tpd.mlp.parameters()]


@pytest.mark.parametrize("use_detector", [True, False])
def test_pta_loss_reaches_tpd_mlp(use_detector):
    model = encoder("tpd")
    scores = model(images(), text(), use_detector=use_detector, need_scores=True)["scores"]
    labels = (torch.rand_like(scores) > 0.5).float()
    torch.nn.functional.binary_cross_entropy(scores, labels).backward()  # COPA eq. (3)
    assert all(g is not None and g.abs().sum() > 0 for g in mlp_grads(model.selector))


def test_downstream_loss_reaches_tpd_mlp_through_fused_token():
    model = encoder("tpd")
    model(images(), text())["tokens"][:, 0].pow(2).sum().backward()  # a loss on image [CLS]
    assert all(g is not None and g.abs().sum() > 0 for g in mlp_grads(model.selector))


def test_fused_token_gives_grad_and_kept_tokens_give_none():
    tpd = TextAwarePatchDetector(D)
    x = torch.randn(2, 17, D)
    tpd.select_text(x, text()).tokens[:, -1].sum().backward()  # the fused token alone
    assert all(g.abs().sum() > 0 for g in mlp_grads(tpd))
    tpd.zero_grad(set_to_none=True)
    out = tpd.select_text(x.requires_grad_(), text())
    out.tokens[:, 1:-1].sum().backward()  # the kept tokens alone: gathered, no path to the MLP
    assert all(g is None or not g.any() for g in mlp_grads(tpd))


# --- warm-up and text-free selection ------------------------------------------------------------

@torch.no_grad()
def test_tpd_without_detector_is_cls_attention_at_the_same_place(timm_vit):
    tpd = encoder("tpd", timm_model=timm_vit)
    cls = encoder("cls_attention", timm_model=timm_vit)
    warm = tpd(images(), text(), use_detector=False, need_scores=True)
    reference = cls(images())
    assert torch.equal(warm["kept"], reference["kept"])
    assert torch.allclose(warm["tokens"], reference["tokens"])
    assert warm["scores"].shape == (2, 16)  # for PTA in the warm-up
    assert tpd(images(), text(), use_detector=False)["scores"] is None  # not asked: the detector does not run
    assert tpd(images(), use_detector=False, need_scores=True)["scores"] is None  # no text to score with


@torch.no_grad()
def test_tpd_keeping_everything_costs_nothing_unless_scores_are_asked():
    """COPA's "w/o TPD" (PTA kept, no selection): at inference the detector MLP must not run."""
    model = encoder("tpd", keep_ratio=1.0)
    calls = []
    model.selector.mlp.register_forward_hook(lambda *_: calls.append(1))
    model.selector.mlp[1].register_forward_hook(lambda *_: calls.append(1))
    out = model(images(), text())
    assert out["scores"] is None and out["tokens"].shape == (2, 1 + 16, D) and not calls
    assert model(images(), text(), need_scores=True)["scores"].shape == (2, 16) and calls  # PTA still trains it


def test_text_guided_selectors_need_text():
    for name in ("tpd", "text_attention"):
        with pytest.raises(ValueError, match="text_cls"):
            encoder(name, location=[2])(images())


# --- TRIPS --------------------------------------------------------------------------------------

@torch.no_grad()
@pytest.mark.parametrize("fusion, length", [("raw", 1 + 10 + 1), ("drop", 1 + 9)])
def test_text_attention_two_layers(fusion, length):
    # n = 16 -> ceil(11.2) = 12 kept + 1 fused = 13 -> ceil(9.1) = 10 (+ 1 fused); with "drop":
    # 16 -> 12 -> ceil(8.4) = 9
    model = encoder("text_attention", location=[1, 3], keep_ratio=0.7, fusion=fusion)
    out = model(images(), text())
    assert out["tokens"].shape == (2, length, D)
    assert out["scores"] is None
    assert out["kept"].shape == (2, length - 1 - (fusion != "drop"))
    assert bool((out["kept"] >= -1).all()) and bool((out["kept"] < 16).all())
    assert model(images(), use_detector=False)["tokens"].shape == (2, length, D)


def test_text_projection_only_when_dims_differ():
    assert isinstance(build_selector("text_attention", D).text_proj, torch.nn.Identity)
    model = VisionEncoder(build_selector("text_attention", D, text_dim=32), [1, 3], **SMALL)
    assert isinstance(model.selector.text_proj, torch.nn.Linear)
    assert model(images(), text(dim=32))["tokens"].shape == (2, 12, D)


def test_tpd_with_another_text_width():
    model = VisionEncoder(build_selector("tpd", D, text_dim=48, hidden_dim=32), 3, **SMALL)
    assert model.selector.mlp[0].in_features == D + 48
    assert model(images(), text(dim=48))["tokens"].shape == (2, 1 + 8 + 1, D)


# --- resolution, validation, every selector ---------------------------------------------------

@torch.no_grad()
def test_checkpoint_at_another_resolution_is_resampled():
    torch.manual_seed(0)
    small = VisionTransformer(**{**SMALL, "img_size": 32})  # 2 x 2 grid
    model = encoder("tpd")
    load_timm_state_dict(model, small.state_dict())
    assert model.pos_embed.shape == (1, 17, D)
    assert torch.equal(model.pos_embed[:, 0], small.pos_embed[:, 0])  # [CLS] entry unchanged


def test_sincos_position_init_is_smooth_on_the_grid_and_learnt():
    model = VisionEncoder(build_selector("none", D), 2, **SMALL, pos_init="sincos")  # 4 x 4 grid
    pos = torch.nn.functional.normalize(model.pos_embed[0, 1:].detach(), dim=-1)
    assert torch.all(model.pos_embed[0, 0] == 0)  # [CLS]
    cos = pos @ pos.T
    # patch 5 is (1, 1): its right / lower neighbours are closer than the far corner (3, 3)
    assert cos[5, 6] > cos[5, 15] and cos[5, 9] > cos[5, 15]
    assert model.pos_embed.requires_grad
    with pytest.raises(ValueError, match="pos_init"):
        VisionEncoder(build_selector("none", D), 2, **SMALL, pos_init="rope")


@pytest.mark.parametrize("location", [0, 4, [1, 2]])
def test_bad_locations(location):
    with pytest.raises(ValueError, match="location"):
        VisionEncoder(build_selector("tpd", D), location, **SMALL)


def test_bad_options():
    with pytest.raises(ValueError, match="bogus"):
        build_selector("bogus", D)
    with pytest.raises(ValueError, match="keep_ratio"):
        build_selector("cls_attention", D, keep_ratio=0.0)
    with pytest.raises(ValueError, match="fusion"):
        ClsAttentionSelector(D, fusion="mean")


@pytest.mark.parametrize("name", sorted(SELECTORS))
@pytest.mark.parametrize("use_detector", [True, False])
def test_every_selector_forward_backward(name, use_detector):
    model = encoder(name, location=[2]).train()
    targets = torch.arange(25).expand(2, 25) % 3 == 0  # the oracle's: the patches the text refers to
    out = model(images(size=80), text(), use_detector=use_detector, targets=targets)  # 5 x 5 grid, resampled
    assert out["tokens"].shape[0] == 2 and out["tokens"].shape[-1] == D
    assert out["tokens"].shape[1] == 1 + out["kept"].shape[1] + (name != "none")
    out["tokens"].mean().backward()
    assert model.patch_embed.proj.weight.grad is not None


@pytest.mark.parametrize("name, location", [("tpd", 2), ("cls_attention", 3), ("text_attention", [2, 3]), ("none", 2)])
def test_encoding_again_from_the_prefix_equals_encoding_from_the_images(name, location):
    """ITM encodes the same images under other texts from the layers before the selection (the
    ``prefix`` output), which no text changes: the same tokens, scores and kept patches as from the images."""
    model = encoder(name, location)
    pixels, guide = images(4), text(4)
    first = model(pixels, guide)
    assert first["prefix"].shape == (4, 1 + 16, D)
    pairs = torch.tensor([2, 0, 3, 3])  # images under other images' texts
    again = model(pixels[pairs], guide.flip(0), prefix=first["prefix"][pairs])
    fresh = model(pixels[pairs], guide.flip(0))
    for key in ("tokens", "scores", "kept"):
        if fresh[key] is None:
            assert again[key] is None
        else:
            torch.testing.assert_close(again[key], fresh[key])


def test_conv_stem_gives_the_patch_grid_centred_on_each_patch_and_fits_no_timm_checkpoint(timm_vit):
    """The conv stem (model.vision_stem conv): one token per 16 px patch as the patch stem gives, at
    other resolutions too; a token sees pixels around its patch, centred on it (the patch labels and
    the selection take token j for patch j); a timm ViT checkpoint, made for the patch stem, is refused
    naming the stem's keys."""
    torch.manual_seed(0)  # the norm's statistics spread a little of every pixel over every token: the centre moves with the weights
    model = VisionEncoder(build_selector("none", D), 2, **SMALL, stem="conv").eval()
    assert model.patch_embed(images()).shape == (2, 4, 4, D)
    assert model(images(size=96))["tokens"].shape == (2, 1 + 36, D)
    pixels = images(batch=1).requires_grad_()
    model.patch_embed(pixels)[0, 1, 2].sum().backward()  # the token of patch (1, 2): rows 16-31, columns 32-47
    weight = pixels.grad.abs().sum(1)[0]  # (64, 64)
    rows, columns = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    centre = (float((weight * rows).sum() / weight.sum()), float((weight * columns).sum() / weight.sum()))
    assert centre == pytest.approx((23.5, 39.5), abs=2.0)  # 3x3 kernels would centre it on (16, 32)
    assert weight[16:32, 32:48].sum() < 0.5 * weight.sum()  # most of what it sees lies around the patch
    with pytest.raises(KeyError, match="patch_embed"):
        load_timm_state_dict(model, timm_vit.state_dict())
    with pytest.raises(ValueError, match="power of 2"):
        VisionEncoder(build_selector("none", D), 2, **{**SMALL, "img_size": 60, "patch_size": 12}, stem="conv")
    with pytest.raises(ValueError, match="stem"):
        VisionEncoder(build_selector("none", D), 2, **SMALL, stem="resnet")


def test_summed_stem_adds_the_patch_map_to_the_conv_stem(timm_vit):
    """model.vision_stem patch_and_conv: each token is the patch stem's linear map of its patch plus
    the conv stem's token (the conv stem alone lost colour on the demo world), on the same grid at
    any resolution; its weights train through both branches; a timm checkpoint is refused."""
    torch.manual_seed(0)
    model = VisionEncoder(build_selector("none", D), 2, **SMALL, stem="patch_and_conv").eval()
    stem = model.patch_embed
    for size in (64, 96):
        pixels = images(size=size)
        torch.testing.assert_close(stem(pixels), stem.patch(pixels) + stem.conv(pixels))
    assert model(images(size=96))["tokens"].shape == (2, 1 + 36, D)
    # checkpoints name the branches (the conv stem's keys under ``conv.``)
    names = {name for name, _ in model.named_parameters() if name.startswith("patch_embed.")}
    assert {"patch_embed.patch.proj.weight", "patch_embed.conv.backbone.0.conv.weight"} <= names
    model.train()
    model(images())["tokens"][..., 0].sum().backward()  # one channel: the final LayerNorm's outputs sum to 0 over all
    assert stem.patch.proj.weight.grad.abs().sum() > 1e-4
    assert stem.conv.backbone[0].conv.weight.grad.abs().sum() > 1e-4
    with pytest.raises(KeyError, match="patch_embed"):
        load_timm_state_dict(model, timm_vit.state_dict())
