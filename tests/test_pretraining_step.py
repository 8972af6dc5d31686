"""Algorithm 1 at a tiny size: every loss term finite and trained, gradients where they belong,
tiny batches safe, the warm-up switch and the momentum update behave."""

import pytest
import torch

from copa.models.copa import CopaModel, CopaSpec
from copa.models.pretraining import CopaPretraining

TINY = dict(
    vocab_size=40, image_size=64, patch_size=16, vision_dim=32, vision_depth=4, vision_heads=2,
    text_dim=32, text_heads=2, text_intermediate=64, text_layers=2, fusion_layers=3, decoder_layers=2,
    max_text_length=32, embed_dim=16,
)
SPECIAL = (0, 1, 2, 3, 4)  # [PAD] [UNK] [CLS] [SEP] [MASK]


def _texts(b, length=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (b, length), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    mask = torch.ones(b, length, dtype=torch.long)
    if b > 1:  # a padded caption: [CLS] w w w [SEP] [PAD] ...
        ids[1, 5:], mask[1, 5:] = 0, 0
        ids[1, 4] = 3
    return ids, mask


def _batch(b=4, b_objects=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids, mask = _texts(b, seed=seed)
    obj_ids, obj_mask = _texts(b_objects, seed=seed + 1)
    return {
        "pairs": {"images": torch.randn(b, 3, 64, 64, generator=g), "input_ids": ids, "attention_mask": mask, "image_ids": torch.arange(b)},
        "objects": {"images": torch.randn(b_objects, 3, 64, 64, generator=g), "input_ids": obj_ids, "attention_mask": obj_mask,
                    "patch_labels": (torch.rand(b_objects, 16, generator=g) > 0.6).float()},
        "seed": seed,
    }


def _pretraining(selection="tpd", queue_size=10, **options):
    model = CopaModel(CopaSpec(**TINY, selection=selection, location=2))
    return CopaPretraining(model, vocab_size=40, mask_id=4, special_ids=SPECIAL, queue_size=queue_size, **options)


@pytest.mark.parametrize("options", [{}, {"itc_image": "text_free", "itm_guidance": "own_caption"}])
def test_all_terms_finite_and_every_trained_part_gets_gradients(options):
    task = _pretraining(**options)
    task.detector_on.fill_(True)
    out = task(_batch())
    assert {"loss", "itc", "itm", "mlm", "prefix", "pta", "pta_precision", "pta_recall"} <= set(out)
    assert all(torch.isfinite(v).all() for v in out.values())
    out["loss"].backward()
    m = task.model
    for part in (m.vision.selector, m.text, m.fusion, m.decoder, m.itm_head, m.mlm_head, m.vision_proj, m.text_proj):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), type(part).__name__
    assert all(p.grad is None for p in task.model_m.parameters())  # the momentum copy is frozen
    assert int(task.queue.count) == 4


def test_without_a_queue_itc_uses_in_batch_negatives_only():
    task = _pretraining(queue_size=0).eval()
    assert task.queue is None
    out = task(_batch())
    assert torch.isfinite(out["loss"]) and torch.isfinite(out["itc"])
    with_queue = _pretraining().eval()
    with_queue.load_state_dict(task.state_dict(), strict=False)  # same weights, empty queue
    assert torch.equal(with_queue(_batch())["itc"], out["itc"])  # an empty queue adds nothing


def test_batch_of_one_and_the_baselines_run():
    out = _pretraining()(_batch(b=1, b_objects=1))
    assert torch.isfinite(out["loss"]) and out["itm_examples"] == 1  # no negative exists: positives only
    for selection in ("none", "cls_attention"):  # no detector: no PTA term (mPLUG baseline, w/o PTA)
        out = _pretraining(selection)(_batch())
        assert "pta" not in out and torch.isfinite(out["loss"])


def test_pairs_of_one_image_are_never_each_others_itm_negative(monkeypatch):
    import copa.models.pretraining as pretraining

    batch = _batch(b=4)
    assert _pretraining().eval()(batch)["itm_examples"] == 12  # 4 positives + a negative per image and per text
    batch["pairs"]["image_ids"] = torch.tensor([5, 5, 5, 5])  # four captions of one image: no negative exists
    assert _pretraining().eval()(batch)["itm_examples"] == 4
    drawn = []
    sample = pretraining.sample_hard_negatives
    monkeypatch.setattr(pretraining, "sample_hard_negatives", lambda *a, **k: drawn.append(sample(*a, **k)) or drawn[-1])
    batch["pairs"]["image_ids"] = torch.tensor([5, 5, 6, 6])
    _pretraining().eval()(batch)
    neg_text, neg_image = drawn[0]
    first_image = torch.tensor([True, True, False, False])
    assert torch.equal(neg_text >= 2, first_image) and torch.equal(neg_image >= 2, first_image)  # always the other image's


def test_the_step_draws_its_itm_negatives_with_its_sharpness(monkeypatch):
    import copa.models.pretraining as pretraining

    seen = []
    sample = pretraining.sample_hard_negatives
    monkeypatch.setattr(pretraining, "sample_hard_negatives", lambda *a, **k: seen.append(k["sharpness"]) or sample(*a, **k))
    for sharpness in (1.0, 0.0):
        assert torch.isfinite(_pretraining(itm_negative_sharpness=sharpness).eval()(_batch())["itm"])
    assert seen == [1.0, 0.0]


def test_the_batch_seed_fixes_the_step_draws():
    """Masks, prefixes and negatives come from the batch's seed (dropout, from the global RNG, is
    the training loop's to seed: eval mode here)."""
    task = _pretraining().eval()
    first, again, other = (task(_batch(seed=s)) for s in (3, 3, 4))
    assert torch.equal(first["mlm"], again["mlm"]) and torch.equal(first["prefix"], again["prefix"])
    assert not torch.equal(first["mlm"], other["mlm"])


def test_warm_up_switch_rules():
    by_steps = _pretraining(switch_rule="steps", switch_steps=3)
    for step in range(3):
        assert not by_steps.detector_on
        by_steps.after_step(step)
    assert by_steps.detector_on
    by_loss = _pretraining(switch_rule="pta_loss", switch_pta_loss=0.5)
    by_loss.after_step(0, pta=0.9)
    assert not by_loss.detector_on
    for step in range(1, 200):
        by_loss.after_step(step, pta=0.1)
    assert by_loss.detector_on and float(by_loss.pta_running) < 0.5


def test_momentum_copy_follows_the_model():
    task = _pretraining()
    online, momentum = task.model.text_proj.weight, task.model_m["text_proj"].weight
    assert torch.equal(online, momentum)
    with torch.no_grad():
        online.add_(1.0)
    task.after_step(0)
    assert torch.allclose(momentum, online - 1.0 + 0.005, atol=1e-6)  # m = 0.995


def _last_word_changed(batch):
    """The same batch with each caption's last word before [SEP] replaced: PrefixLM's prefix never
    reaches it (the target keeps at least one word), and masking every word hides it from MLM."""
    other = {**batch, "pairs": dict(batch["pairs"])}
    ids, mask = batch["pairs"]["input_ids"].clone(), batch["pairs"]["attention_mask"]
    last = mask.sum(1) - 2  # (B,) the word before [SEP]
    rows = torch.arange(len(ids))
    ids[rows, last] = 5 + (ids[rows, last] - 5 + 7) % 35
    other["pairs"]["input_ids"] = ids
    return other


def test_mlm_and_prefix_selection_never_read_the_hidden_words(monkeypatch):
    """Before: the patches MLM and PrefixLM fuse were selected under the whole caption, so the
    kept patches carried the words to predict."""
    import copa.models.pretraining as pretraining

    def mask_every_word(ids, mask, vocab_size, mask_id, special_ids, prob, generator):
        words = mask.bool() & ~torch.isin(ids, torch.tensor(special_ids))
        return ids.masked_fill(words, mask_id), ids.masked_fill(~words, -100)

    monkeypatch.setattr(pretraining, "mask_tokens", mask_every_word)
    task = _pretraining().eval()
    task.detector_on.fill_(True)
    seen = {"mlm": [], "decoder_image": []}
    mlm_logits, decode = task.model.mlm_logits, task.model.decode
    monkeypatch.setattr(task.model, "mlm_logits", lambda fused: seen["mlm"].append(fused) or mlm_logits(fused))
    monkeypatch.setattr(task.model, "decode", lambda ids, m, image, *rest: seen["decoder_image"].append(image) or decode(ids, m, image, *rest))
    batch = _batch()
    with torch.no_grad():
        task(batch)
        task(_last_word_changed(batch))
    assert torch.equal(*seen["mlm"]) and torch.equal(*seen["decoder_image"])
    with torch.no_grad():  # the control: the selection does read the text it is given
        text = task.model.encode_text(batch["pairs"]["input_ids"], batch["pairs"]["attention_mask"])
        changed = _last_word_changed(batch)["pairs"]
        other = task.model.encode_text(changed["input_ids"], changed["attention_mask"])
        images = batch["pairs"]["images"]
        assert not torch.equal(task.model.encode_image(images, text[:, 0])["tokens"], task.model.encode_image(images, other[:, 0])["tokens"])


def test_itc_contrasts_the_features_retrieval_ranks_with(monkeypatch):
    """COPA Appendix E: retrieval's coarse stage ranks text-free image features (image-[CLS]
    attention); ITC trains on those by default (before: on the caption-guided ones)."""
    from conftest import PARAMS_DIR

    from copa.config import load_params

    assert all(load_params(profile, params_dir=PARAMS_DIR).pretrain.itc_image == "text_free" for profile in ("fixture", "demo", "paper"))
    task = _pretraining().eval()
    task.detector_on.fill_(True)
    features = []
    image_feature = task.model.image_feature
    monkeypatch.setattr(task.model, "image_feature", lambda tokens: features.append(tokens) or image_feature(tokens))
    batch = _batch()
    with torch.no_grad():
        task(batch)
        text_free = task.model.encode_image(batch["pairs"]["images"], None, use_detector=False)["tokens"]  # as tasks.retrieval
    torch.testing.assert_close(features[0], text_free)


@pytest.mark.parametrize("selector_lr", ["text", "vision"])
def test_the_detector_trains_at_the_rate_params_name(selector_lr):
    """Before: the TPD's new MLP always trained at the ViT's rate (1e-5 in the paper profile)."""
    from copa.train.schedule import model_param_groups

    task = _pretraining()
    groups = model_param_groups(task, selector_lr, lr_vision=1e-5, lr_text=1e-4, weight_decay=0.02)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    detector = [lr_of[id(p)] for p in task.model.vision.selector.mlp.parameters()]
    assert set(detector) == {1e-4 if selector_lr == "text" else 1e-5}
    assert {lr_of[id(p)] for p in task.model.vision.blocks.parameters()} == {1e-5}  # the ViT itself
    assert {lr_of[id(p)] for p in task.model.text.parameters()} == {1e-4}
    assert len(lr_of) == sum(p.requires_grad for p in task.parameters())  # each trainable parameter once


@pytest.mark.parametrize("fusion", ["softmax", "normalized"])
def test_the_tpd_fusion_is_the_one_params_name(fusion):
    """COPA eq. 1 (softmax of sigmoid scores: near-uniform weights) is the default; the other reading is an option."""
    from conftest import PARAMS_DIR

    from copa.config import load_params
    from copa.train.build import copa_spec, single_stream_spec

    params = load_params("fixture", [f"model.selection.tpd_fusion={fusion}"], params_dir=PARAMS_DIR)
    assert load_params("paper", params_dir=PARAMS_DIR).model.selection.tpd_fusion == "softmax"
    assert CopaModel(copa_spec(params, 40)).vision.selector.fusion == fusion
    assert single_stream_spec(params, 40).tpd_fusion == fusion


def test_the_vit_position_embeddings_and_cls_token_take_no_weight_decay():
    """timm's no_weight_decay() (ALBEF / mPLUG's optimiser): before, both were decayed toward zero."""
    from copa.train.schedule import model_param_groups

    task = _pretraining()
    decay_of = {id(p): g["weight_decay"] for g in model_param_groups(task, "text", 1e-5, 1e-4, 0.02) for p in g["params"]}
    vision = task.model.vision
    assert decay_of[id(vision.pos_embed)] == decay_of[id(vision.cls_token)] == 0.0
    assert decay_of[id(vision.blocks[0].attn.qkv.weight)] == 0.02


def test_keeping_every_patch_encodes_the_pairs_once(monkeypatch):
    """w/o TPD (keep 100%): no text changes the tokens, so MLM, PrefixLM and ITC reuse the one pass."""
    model = CopaModel(CopaSpec(**TINY, selection="tpd", location=2, keep_ratio=1.0))
    task = CopaPretraining(model, vocab_size=40, mask_id=4, special_ids=SPECIAL, queue_size=10)
    task.detector_on.fill_(True)
    calls = []
    encode = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda *a, **k: calls.append(1) or encode(*a, **k))
    with torch.no_grad():
        task(_batch())
    assert len(calls) == 2  # the pairs once, the objects (PTA) once
