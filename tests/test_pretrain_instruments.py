"""Instruments of `copa pretrain-eval` (issue 19): held-out ITM accuracy beside the constant
predictor's, the same-image TPD contrast with its interval and bounds, and linear probes of the
frozen ViT features."""

from __future__ import annotations

import json

import pytest
import torch

from copa.config import load_params
from copa.data.heldout import heldout_attributes, heldout_object_samples, karpathy_retrieval_set
from copa.data.layout import DataLayout
from copa.data.pretrain_data import image_text_pairs
from copa.data.synth.scene import COLOURS, IN_DOMAIN_BACKGROUNDS
from copa.data.tokenizer import load_tokenizer, train_wordpiece
from copa.eval.itm_accuracy import balanced_accuracy, itm_accuracy, itm_negatives, matching, positive_texts, ranking_auc
from copa.eval.linear_probe import image_split, probe_accuracies, single_box_patches
from copa.eval.ridge import ridge_probe
from copa.eval.same_image_contrast import contrast_pairs, same_image_contrast, tpd_contrast
from copa.models.copa import CopaModel
from copa.train.build import copa_spec

from conftest import PARAMS_DIR


@pytest.fixture(scope="module")
def tiny(fixture_world, tmp_path_factory):
    """(params, tokenizer, an untrained tiny TPD model, held-out pairs, held-out objects)."""
    layout = DataLayout(fixture_world)
    # timm's position init: with the fixture's sine-cosine one, this untrained TPD ranks a held-out image's
    # patches alike under every text (the position term outweighs what the text changes), and the text-aware
    # control below needs one whose ranking the text moves
    params = load_params("fixture", ["model.vision_pos_init=trunc_normal"], params_dir=PARAMS_DIR)
    folder = tmp_path_factory.mktemp("vocab")
    train_wordpiece([p.text for p in image_text_pairs(layout, params.pretrain.pair_sources)], params.model.vocab_size, folder)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(folder / "vocab.txt")
    model = CopaModel(copa_spec(params, len(tokenizer))).eval()
    return params, tokenizer, model, karpathy_retrieval_set(layout, "coco", "test"), heldout_object_samples(layout, params.filter, "test")


def _sizes(params):
    return params.patch_labels.image_size, params.patch_labels.patch_size, params.model.max_text_length


# ------------------------------------------------------------------------------------- ITM
def test_balanced_accuracy_and_the_constant_predictor() -> None:
    labels = torch.tensor([True, True, False, False, False, False])
    got = balanced_accuracy(torch.tensor([True, False, False, False, False, True]), labels)
    assert got == {"positive_recall": 0.5, "negative_recall": 0.75, "balanced": 0.625}
    assert balanced_accuracy(torch.ones(6, dtype=torch.bool), labels)["balanced"] == 0.5
    assert balanced_accuracy(torch.zeros(6, dtype=torch.bool), labels)["balanced"] == 0.5
    assert balanced_accuracy(labels, labels)["balanced"] == 1.0


def test_ranking_auc_counts_ordered_pairs_and_half_the_ties() -> None:
    assert ranking_auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0, 0.0])) == 1.0
    assert ranking_auc(torch.tensor([0.0]), torch.tensor([1.0, 2.0])) == 0.0
    assert ranking_auc(torch.full((4,), 0.3), torch.full((7,), 0.3)) == 0.5  # a constant score
    # pairs (pos, neg): 2>1 yes, 2=2 half, 2<5 no; 5>1, 5>2, 5=5 half -> (1 + 0.5 + 2 + 0.5) / 6
    assert ranking_auc(torch.tensor([2.0, 5.0]), torch.tensor([1.0, 2.0, 5.0])) == pytest.approx(4 / 6)
    scores = torch.randn(50, generator=torch.Generator().manual_seed(0))
    brute = ((scores[:20, None] > scores[None, 20:]).double() + 0.5 * (scores[:20, None] == scores[None, 20:]).double()).mean()
    assert ranking_auc(scores[:20], scores[20:]) == pytest.approx(float(brute))
    with pytest.raises(ValueError, match="positives and negatives"):
        ranking_auc(torch.tensor([1.0]), torch.tensor([]))


def test_negatives_never_match_their_positive() -> None:
    # 3 images, 2 captions each; image 2's second caption repeats image 0's first (case aside)
    texts = ["a red circle.", "a circle.", "a blue star.", "a star.", "a green ring.", "A red  circle."]
    text_image = [0, 0, 1, 1, 2, 2]
    matches = matching(texts, text_image, 3)
    positive = positive_texts(text_image, 3)
    assert positive.tolist() == [0, 2, 4]
    assert matches[2, 0] and matches[0, 5]  # the repeated text matches both images
    # where the world says a caption is true of another image ("a star." of image 2 too), it matches there as well
    told = matching(texts, text_image, 3, (frozenset({0}), frozenset({0}), frozenset({1}), frozenset({1, 2}), frozenset({2}), frozenset({2})))
    assert told[2, 3] and not matches[2, 3] and (told & ~matches).sum() == 1
    sim = torch.zeros(3, 6)
    sim[0, 5] = sim[0, 4] = 5.0  # image 0's most similar other text is its own text again: not allowed
    sim[2, 0] = 9.0  # image 2 is the most similar image to caption 0, but has that caption too
    neg_text, neg_image = itm_negatives(sim, matches, positive, "hard")
    assert neg_text[0] == 4 and neg_image[0] != 2
    for kind in ("hard", "random"):
        neg_text, neg_image = itm_negatives(sim, matches, positive, kind, seed=3)
        assert not matches[torch.arange(3), neg_text].any()  # never a caption of the image
        assert not matches[neg_image, positive].any() and (neg_image != torch.arange(3)).all()
    assert all(torch.equal(a, b) for a, b in zip(itm_negatives(sim, matches, positive, "random", seed=3),
                                                 itm_negatives(sim, matches, positive, "random", seed=3)))


@pytest.mark.parametrize("guidance,detector", [("pair_text", True), ("own_caption", True), ("pair_text", False)])
def test_itm_accuracy_on_a_tiny_model(tiny, guidance, detector) -> None:
    params, tokenizer, model, pairs, _ = tiny
    size, _, length = _sizes(params)
    result = itm_accuracy(model, tokenizer, pairs, size, length, guidance, detector, batch_size=7, progress=False)
    assert result["positives"] == len(pairs.images) and result["negatives_per_kind"] == 2 * len(pairs.images)
    assert result["constant"] == 0.5 and result["guidance"] == guidance and result["detector"] is detector
    for kind in ("hard", "random"):
        assert 0 <= result[kind]["balanced"] <= 1
        assert result[kind]["balanced"] == pytest.approx((result[kind]["positive_recall"] + result[kind]["negative_recall"]) / 2)
        assert 0 <= result[kind]["auc"] <= 1
        # the per-image margins give the same numbers back
        margins = result["margins"]
        positive = torch.tensor(margins["positive"])
        negative = torch.tensor(margins[f"{kind}_text"] + margins[f"{kind}_image"])
        assert len(positive) == len(pairs.images) and len(negative) == 2 * len(pairs.images)
        assert result[kind]["auc"] == pytest.approx(ranking_auc(positive, negative))
        assert result[kind]["positive_recall"] == pytest.approx((positive > 0).float().mean().item())


# ------------------------------------------------------------------------------------- same-image contrast
def test_contrast_pairs_are_ordered_pairs_of_one_image_with_different_texts() -> None:
    images = ["x", "x", "x", "y", "y", "z"]
    texts = ["This is a circle.", "this is a  circle.", "This is a star.", "This is a ring.", "This is a cross.", "This is a ring."]
    assert contrast_pairs(images, texts) == [(0, 2), (1, 2), (2, 0), (2, 1), (3, 4), (4, 3)]


def _rows(held):
    rows = [(s, e) for s in held.samples for e in s.elems]
    return [str(s.image) for s, _ in rows], [e.text for _, e in rows]


def test_contrast_of_a_text_aware_scorer_is_positive_and_its_interval_deterministic(tiny) -> None:
    params, tokenizer, model, _, held = tiny
    images, texts = _rows(held)
    # labels: each row's box alone (one patch); the scorer puts each text's own patches first
    n = 16
    labels = torch.zeros(len(images), n)
    labels[torch.arange(len(images)), torch.arange(len(images)) % n] = 1
    scores = labels + torch.rand(labels.shape, generator=torch.Generator().manual_seed(0)) * 0.5
    result = same_image_contrast(scores, labels, images, texts, seed=4)
    contrast = result["contrast"]
    assert contrast["low"] <= contrast["estimate"] <= contrast["high"] and contrast["low"] > 0.3
    assert result["ap_own_text"] == 1.0 and result["pairs"] == len(contrast_pairs(images, texts))
    assert result["bounds"]["text_free"]["contrast"]["estimate"] == 0.0
    assert result["bounds"]["text_aware"]["contrast"]["estimate"] > 0.3
    assert same_image_contrast(scores, labels, images, texts, seed=4) == result  # a seed, the same interval
    assert same_image_contrast(scores, labels, images, texts, seed=5)["contrast"]["se"] != contrast["se"]


def test_contrast_of_a_tpd_that_ignores_the_text_is_zero(tiny) -> None:
    params, tokenizer, model, _, held = tiny
    size, patch, length = _sizes(params)
    blind = CopaModel(model.spec).eval()
    blind.load_state_dict(model.state_dict())
    first = blind.vision.selector.mlp[0]
    with torch.no_grad():
        first.weight[:, params.model.vision_dim:] = 0  # the text half of the TPD's first layer
    result = tpd_contrast(blind, tokenizer, held, size, patch, length, 0.0, "same_text", batch_size=5, progress=False)
    assert result["images"] >= 2 and result["pairs"] >= 2
    assert result["contrast"]["estimate"] == pytest.approx(0.0, abs=1e-6)
    assert result["contrast"]["low"] <= result["contrast"]["estimate"] <= result["contrast"]["high"]
    assert result["bounds"]["text_aware"]["contrast"]["estimate"] > 0.1  # what a text-aware scorer could show here
    # the same model reading the text: scores differ between texts
    aware = tpd_contrast(model, tokenizer, held, size, patch, length, 0.0, "same_text", batch_size=5, progress=False)
    assert aware["ap_own_text"] != aware["ap_other_text"]


def test_contrast_needs_a_tpd(tiny) -> None:
    params, tokenizer, _, _, held = tiny
    size, patch, length = _sizes(params)
    model = CopaModel(copa_spec(load_params("fixture", ["model.selection.method=cls_attention"], params_dir=PARAMS_DIR), len(tokenizer)))
    assert "note" in tpd_contrast(model.eval(), tokenizer, held, size, patch, length, 0.0, "same_text", progress=False)


# ------------------------------------------------------------------------------------- linear probes
def test_ridge_probe_reads_a_label_the_features_encode_and_not_random_ones() -> None:
    generator = torch.Generator().manual_seed(0)
    classes = ["red", "green", "blue", "pink"]
    y = [classes[int(i)] for i in torch.randint(0, 4, (800,), generator=generator)]
    onehot = torch.nn.functional.one_hot(torch.tensor([classes.index(c) for c in y]), 4).float()
    encoded = torch.cat([onehot, torch.randn(800, 12, generator=generator)], 1) + 0.3 * torch.randn(800, 16, generator=generator)
    good = ridge_probe(encoded[:400], y[:400], encoded[400:], y[400:])
    assert good["accuracy"] > 0.95 and good["majority"] < 0.4 and good["classes"] == 4
    noise = torch.randn(800, 16, generator=generator)
    bad = ridge_probe(noise[:400], y[:400], noise[400:], y[400:])
    assert abs(bad["accuracy"] - bad["majority"]) < 0.1
    assert "note" in ridge_probe(noise[:4], ["red"] * 4, noise[4:8], y[4:8])  # one class: nothing to fit


def test_heldout_attributes_from_the_scenes_and_without_them(fixture_world, tmp_path) -> None:
    layout = DataLayout(fixture_world)
    held = heldout_object_samples(layout, load_params("fixture", params_dir=PARAMS_DIR).filter, "test")
    attributes = heldout_attributes(layout, held)
    assert "synthetic scenes" in attributes.source
    assert [len(boxes) for boxes in attributes.objects] == [len(s.elems) for s in held.samples]
    colours = {box["colour"] for boxes in attributes.objects for box in boxes}
    assert colours <= set(COLOURS) and len(colours) > 1
    assert {image["background"] for image in attributes.images} <= set(IN_DOMAIN_BACKGROUNDS)
    assert [image["objects"] for image in attributes.images] == [str(len(s.elems)) for s in held.samples]
    # a data root without the world's manifest (real COCO): shapes and counts only
    plain = heldout_attributes(DataLayout(tmp_path), held)
    assert plain.source == "COCO categories"
    assert all(set(box) == {"shape"} for boxes in plain.objects for box in boxes) and all(set(i) == {"objects"} for i in plain.images)


def test_probes_read_injected_features_that_encode_the_labels(tiny, fixture_world) -> None:
    params, _, _, _, held = tiny
    size, patch, _ = _sizes(params)
    attributes = heldout_attributes(DataLayout(fixture_world), held)
    colours = sorted(COLOURS)
    # a fake encoder: each single-box patch's feature is the one-hot of its box's colour; the
    # [CLS] the one-hot of the image's background
    patch_feats = []
    for i, sample in enumerate(held.samples):
        _, box = single_box_patches(sample, size, patch)
        index = torch.tensor([colours.index(attributes.objects[i][k]["colour"]) for k in box.tolist()], dtype=torch.long)
        patch_feats.append(torch.nn.functional.one_hot(index, len(colours)).float())
    backgrounds = sorted(IN_DOMAIN_BACKGROUNDS)
    cls = torch.nn.functional.one_hot(torch.tensor([backgrounds.index(a["background"]) for a in attributes.images]), len(backgrounds)).float()
    result = probe_accuracies(patch_feats, cls, held, attributes, size, patch, seed=0)
    assert result["train_images"] + result["test_images"] == len(held.samples)
    assert set(result["patch_tokens"]) == {"shape", "colour", "row", "column"} and set(result["image_cls"]) == {"objects", "background"}
    assert result["patch_tokens"]["row"]["accuracy"] <= result["patch_tokens"]["row"]["majority"] + 0.2  # colour says nothing of place

    def seen_share(probe_labels, train_labels):  # a perfect linear code gets every class it was fitted on
        return sum(y in train_labels for y in probe_labels) / len(probe_labels)

    train = image_split(len(held.samples), seed=0).nonzero().squeeze(1).tolist()
    test = [i for i in range(len(held.samples)) if i not in train]
    train_colours = {attributes.objects[i][k]["colour"] for i in train for k in single_box_patches(held.samples[i], size, patch)[1].tolist()}
    test_colours = [attributes.objects[i][k]["colour"] for i in test for k in single_box_patches(held.samples[i], size, patch)[1].tolist()]
    colour = result["patch_tokens"]["colour"]
    assert colour["accuracy"] == pytest.approx(seen_share(test_colours, train_colours)) and colour["accuracy"] > colour["majority"]
    background = result["image_cls"]["background"]
    train_bgs = {attributes.images[i]["background"] for i in train}
    assert background["accuracy"] == pytest.approx(seen_share([attributes.images[i]["background"] for i in test], train_bgs))
    # the same probes on random features: near the majority class, never a perfect read
    noise = probe_accuracies([torch.randn(len(f), 8) for f in patch_feats], torch.randn(len(cls), 8), held, attributes, size, patch, seed=0)
    assert noise["patch_tokens"]["colour"]["accuracy"] < colour["accuracy"]


def test_the_position_probe_reads_a_token_that_knows_its_place(tiny, tmp_path) -> None:
    """Grounding needs the patch tokens to carry their position (the demo's read 0.23 against
    chance 0.125: patch embeddings of norm ~35 beside position embeddings of ~0.35)."""
    params, _, _, _, held = tiny
    size, patch, _ = _sizes(params)
    grid = size // patch
    # a fake encoder whose single-box patch features are the one-hots of their row and column
    located = [single_box_patches(sample, size, patch)[0] for sample in held.samples]
    feats = [torch.cat([torch.nn.functional.one_hot(p // grid, grid), torch.nn.functional.one_hot(p % grid, grid)], 1).float()
             for p in located]
    cls = torch.randn(len(held.samples), 4)
    # the fusion's input: every other of those patches kept, in the order given, their tokens the same code
    kept = [torch.arange(0, len(p), 2) for p in located]
    output = [(k, f[k]) for k, f in zip(kept, feats)]
    result = probe_accuracies(feats, cls, held, heldout_attributes(DataLayout(tmp_path), held), size, patch, seed=0, output_feats=output)
    train = image_split(len(held.samples), seed=0)
    for part, places in (("patch_tokens", located), ("fusion_input_tokens", [p[k] for p, k in zip(located, kept)])):
        for name, of in (("row", lambda q: q // grid), ("column", lambda q: q % grid)):
            seen = {of(q) for i, p in enumerate(places) if train[i] for q in p.tolist()}
            tested = [of(q) for i, p in enumerate(places) if not train[i] for q in p.tolist()]
            probe = result[part][name]  # a perfect linear code gets every place it was fitted on
            assert probe["test"] == len(tested)
            assert probe["accuracy"] == pytest.approx(sum(y in seen for y in tested) / len(tested)) and probe["accuracy"] > probe["majority"]
    # tokens that do not say their place: the fusion's input probe reads it no better than the majority does
    blind = probe_accuracies(feats, cls, held, heldout_attributes(DataLayout(tmp_path), held), size, patch, seed=0,
                             output_feats=[(k, torch.randn(len(k), 16)) for k in kept])
    assert blind["fusion_input_tokens"]["row"]["accuracy"] < result["fusion_input_tokens"]["row"]["accuracy"]


# ------------------------------------------------------------------------------------- the command
def test_pretrain_eval_json_holds_the_instruments(fixture_pretraining_run, fixture_world, tmp_path, capsys) -> None:
    from copa.cli import main

    args = ["pretrain-eval", "--run", str(fixture_pretraining_run), "--root", str(fixture_world), "--json", str(tmp_path / "probe.json"),
            "--figure", str(tmp_path / "figure"), "--checkpoints", "last", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "ITM balanced accuracy" in printed and "masked colour words within class" in printed
    (probe,) = json.loads((tmp_path / "probe.json").read_text())["checkpoints"]
    itm = probe["itm"]
    assert itm["constant"] == 0.5 and all(0 <= itm[kind]["balanced"] <= 1 for kind in ("hard", "random"))
    contrast = probe["same_image_contrast"]
    assert contrast["contrast"]["low"] <= contrast["contrast"]["estimate"] <= contrast["contrast"]["high"]
    assert set(contrast["bounds"]) == {"text_free", "text_aware"}
    probes = probe["linear_probes"]
    assert set(probes["patch_tokens"]) == set(probes["fusion_input_tokens"]) == {"shape", "colour", "row", "column"}
    assert set(probes["image_cls"]) == {"objects", "background"}
    assert all(0 <= p["accuracy"] <= 1 and 0 <= p["majority"] <= 1 for part in ("patch_tokens", "image_cls") for p in probes[part].values())
    # the kept patches only (the fixture's few may leave a half with one class: a probe that says so)
    kept = probes["fusion_input_tokens"]
    assert all(0 <= p["accuracy"] <= 1 if "accuracy" in p else p["note"].startswith("too few") for p in kept.values())
    assert kept["row"]["test"] + kept["row"]["train"] < probes["patch_tokens"]["row"]["test"] + probes["patch_tokens"]["row"]["train"]
    grounding = probe["word_grounding"]  # the fixture world's captions name categories and colours
    assert set(grounding) == {"category", "colour"} and all(g["examples"] > 0 for g in grounding.values())
    assert (tmp_path / "figure.png").is_file()


def test_word_grounding_scores_a_fusion_that_reads_the_colour_from_the_image(tmp_path) -> None:
    """An MLM head that names the colour drawn in the image at the masked position only: right with
    the caption's own image, wrong with another (captions of different lengths: the padded batch keeps
    each word's position); a class word that is not one word piece is not masked."""
    from PIL import Image

    from copa.data.heldout import RetrievalSet
    from copa.data.tokenizer import load_tokenizer
    from copa.eval.word_grounding import word_grounding

    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "star", *colours]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = load_tokenizer(tmp_path / "vocab.txt")
    paths = []
    for name, rgb in colours.items():
        paths.append(tmp_path / f"{name}.png")
        Image.new("RGB", (16, 16), rgb).save(paths[-1])
    data = RetrievalSet(tuple(paths), ("a red star", "a star a green star", "blue"), (0, 1, 2))
    colour_ids = torch.tensor([tokenizer.convert_tokens_to_ids(name) for name in colours])

    class ColourReader(torch.nn.Module):
        def encode_text(self, ids, mask):
            return (ids == tokenizer.mask_token_id).float()[..., None].expand(-1, -1, 3)  # 1 at the masked word only

        def encode_image(self, images, guide, use_detector):
            return {"tokens": images.mean((2, 3))[:, None]}  # (B, 1, 3): the image's mean colour

        def fuse(self, image, text, mask):
            return image, text * image  # the masked word's state gets the image's colour

        def mlm_logits(self, fused):
            logits = torch.zeros(*fused.shape[:2], len(vocab))
            logits[..., colour_ids] = fused
            return logits

    result = word_grounding(ColourReader(), tokenizer, data, {"colour": tuple(colours), "category": ("star", "two words")}, 16, 8,
                            False, progress=False)
    colour = result["colour"]
    assert colour["examples"] == 3 and colour["words"] == 3 and colour["within_class_chance"] == pytest.approx(100 / 3)
    assert result["category"]["examples"] == 3 and result["category"]["words"] == 1  # "star" three times; "two words" is none
    assert colour["own_image"] == colour["own_image_within_class"] == 100.0 and colour["other_image"] == 0.0
    assert result["category"]["own_image"] == 0.0  # the head never names a shape
    with pytest.raises(ValueError, match="at least two"):
        word_grounding(ColourReader(), tokenizer, RetrievalSet(tuple(paths[:1]), ("a red star",), (0,)), {"colour": ("red",)}, 16, 8,
                       False, progress=False)
