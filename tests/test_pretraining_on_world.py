"""Datasets, tokenizer, model and Algorithm 1 together: one pretraining step on batches of the
fixture world, as the engine will run it."""

import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from copa.config import load_params
from copa.data.filtering import run_filter
from copa.data.layout import DataLayout
from copa.data.pretrain_data import ObjectDataset, Pair, PairDataset, image_text_pairs, object_samples, pair_image_ids
from copa.data.tokenizer import load_tokenizer, train_wordpiece
from copa.train.build import build_pretraining, copa_spec
from copa.train.pretrain import PretrainTask

from conftest import logged

PARAMS_DIR = Path(__file__).parents[1] / "params"


def test_one_step_on_the_fixture_world(fixture_world, tmp_path):
    params = load_params("fixture", params_dir=PARAMS_DIR)
    pairs = image_text_pairs(DataLayout(fixture_world), params.pretrain.pair_sources)
    tokenizer = load_tokenizer(train_wordpiece([p.text for p in pairs], params.model.vocab_size, tmp_path / "vocab"))
    run_filter(fixture_world, params.filter, tmp_path / "annotations", progress=False)
    objects = object_samples(tmp_path / "annotations", fixture_world)
    size, patch, length = params.patch_labels.image_size, params.patch_labels.patch_size, params.model.max_text_length
    pair_data = PairDataset(pairs, tokenizer, size, length, params.seed)
    object_data = ObjectDataset(objects, tokenizer, size, patch, length, params.seed)
    pair_batch = next(iter(DataLoader(pair_data, batch_size=params.pretrain.batch_size, collate_fn=pair_data.collate_fn)))
    object_batch = next(iter(DataLoader(object_data, batch_size=params.pretrain.object_batch_size, collate_fn=object_data.collate_fn)))

    torch.manual_seed(params.seed)
    task = build_pretraining(params, tokenizer)
    assert copa_spec(params, len(tokenizer)).image_size == size  # the model's grid is the labels' grid
    softer = load_params("fixture", ["pretrain.itm_negative_sharpness=0.5"], params_dir=PARAMS_DIR)
    assert task.itm_negative_sharpness == 1.0 and build_pretraining(softer, tokenizer).itm_negative_sharpness == 0.5
    task.detector_on.fill_(True)
    batch = {
        "pairs": {k: pair_batch[k] for k in ("input_ids", "attention_mask")} | {"images": pair_batch["image"],
                                                                                "image_ids": torch.tensor(pair_image_ids(pairs))[pair_batch["index"]]},
        "objects": {k: object_batch[k] for k in ("input_ids", "attention_mask", "patch_labels")} | {"images": object_batch["image"]},
        "seed": 0,
    }
    optimizer = torch.optim.AdamW(task.model.parameters(), lr=1e-3)
    task.eval()  # no dropout: the same batch and seed give the same masks, prefixes and negatives
    fitted = []  # the terms that see the same examples each step (ITC's grow with the queue)
    for _ in range(4):
        out = task(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        task.after_step(0)
        assert torch.isfinite(out["loss"])
        fitted.append(float(out["mlm"] + out["prefix"] + out["pta"]))
    assert fitted[-1] < fitted[0], fitted
    assert object_batch["patch_labels"].shape == (params.pretrain.object_batch_size, (size // patch) ** 2)


def test_copa_pretrain_runs_an_epoch_and_resumes(fixture_world, tmp_path, capsys):
    import json

    from copa.cli import main

    params = load_params("fixture", params_dir=PARAMS_DIR)
    run_filter(fixture_world, params.filter, tmp_path / "annotations", progress=False)
    args = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR), "--set", "pretrain.epochs=1", "pretrain",
            "--root", str(fixture_world), "--annotations", str(tmp_path / "annotations"), "--out", str(tmp_path / "run")]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["step"] > 0 and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert (tmp_path / "run" / "checkpoints" / "epoch_000.pt").is_file() and (tmp_path / "run" / "vocab" / "vocab.txt").is_file()
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["resolved_params"]["pretrain"]["epochs"] == 1
    init = json.loads((tmp_path / "run" / "encoder_init" / "metrics.json").read_text())  # the fixture's encoder_init stage
    assert init["step"] == params.pretrain.encoder_init.steps and math.isfinite(init["train/contrastive"])
    resolved = json.loads((tmp_path / "run" / "resolved_params.json").read_text())
    assert resolved["params"] == checkpoint["resolved_params"] and resolved["world_size"] == 1
    # a second call finds the finished run and resumes it: nothing left to do
    assert main(args) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["step"] == metrics["step"]

    # the held-out probes of every epoch's checkpoint, and the figure
    probe_args = ["pretrain-eval", "--run", str(tmp_path / "run"), "--root", str(fixture_world), "--json", str(tmp_path / "probe.json"),
                  "--figure", str(tmp_path / "figure"), "--quiet"]
    assert main(probe_args) == 0
    assert "ITC R@1" in capsys.readouterr().out
    probes = json.loads((tmp_path / "probe.json").read_text())
    assert probes["run"] == "run" and [c["checkpoint"] for c in probes["checkpoints"]] == ["epoch_000.pt"]
    (probe,) = probes["checkpoints"]
    assert probe["step"] == metrics["step"] and probe["epoch"] == 1
    assert 0 <= probe["retrieval"]["tr_r1"] <= 100 and probe["retrieval"]["chance"]["ir_r1"] == 100 / probe["retrieval"]["images"]
    assert probe["patch_detection"]["keep_fraction"] == 0.5 and probe["patch_detection"]["samples"] > 0
    assert (tmp_path / "figure.png").is_file() and (tmp_path / "figure.pdf").is_file()
    # probing again gives the same bytes (CPU inference is deterministic)
    first = (tmp_path / "probe.json").read_bytes()
    assert main(probe_args) == 0 and (tmp_path / "probe.json").read_bytes() == first


def test_runs_share_one_selection_free_encoder_init(fixture_world, tmp_path):
    """`copa encoder-init` once; runs of any selector start from its encoders without retraining it."""
    import json

    import pytest

    from copa.cli import main
    from copa.models.copa import CopaModel
    from copa.train.encoder_init import INIT_PARTS, initialise_encoders
    from copa.train.pretrain import PairSource

    params = load_params("fixture", params_dir=PARAMS_DIR)
    run_filter(fixture_world, params.filter, tmp_path / "annotations", progress=False)
    common = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR), "--set", "pretrain.epochs=1", "--set", "pretrain.steps_per_epoch=1"]
    assert main([*common, "encoder-init", "--root", str(fixture_world), "--out", str(tmp_path / "init")]) == 0
    assert json.loads((tmp_path / "init" / "metrics.json").read_text())["step"] == params.pretrain.encoder_init.steps
    last = tmp_path / "init" / "checkpoints" / "last.pt"
    stage = torch.load(last, weights_only=True)
    assert "selection" not in stage["resolved_params"]["model"]  # the stage selects nothing: any run can share it
    stamp = last.stat().st_mtime_ns

    # a run of another selector (and another Algorithm 1 length) gets exactly the stage's encoders
    other = load_params("fixture", ["model.selection.method=cls_attention", "pretrain.epochs=3"], params_dir=PARAMS_DIR)
    source = PairSource(other, fixture_world, tmp_path / "run")
    model = CopaModel(copa_spec(other, len(source.tokenizer)))
    initialise_encoders(model, source.pair_data, other, tmp_path / "init", source.vocab_file)
    assert last.stat().st_mtime_ns == stamp  # finished: resumed at its end, not retrained
    for part in INIT_PARTS:
        for key, value in getattr(model, part).state_dict().items():
            assert torch.equal(value, stage["model"][f"parts.{part}.{key}"]), (part, key)
    # ...and a run with another vocabulary is refused
    (tmp_path / "other_vocab.txt").write_text("[PAD]\n[UNK]\n")
    with pytest.raises(ValueError, match="another vocabulary"):
        initialise_encoders(model, source.pair_data, other, tmp_path / "init", tmp_path / "other_vocab.txt")

    # the CLI: pretrain --encoder-init uses the shared stage, and trains none of its own
    args = [*common, "pretrain", "--root", str(fixture_world), "--annotations", str(tmp_path / "annotations"),
            "--out", str(tmp_path / "tpd"), "--encoder-init", str(tmp_path / "init")]
    assert main(args) == 0
    assert last.stat().st_mtime_ns == stamp and not (tmp_path / "tpd" / "encoder_init").exists()


def test_encoder_init_contrasts_boxes_with_their_texts(fixture_world, tmp_path):
    """pretrain.encoder_init.objective captions_and_boxes: the contrastive stage also trains on PTA's
    object stream (a box's feature: the mean of the last patch tokens its labels mark), records what
    that stream reads, and without the filtered annotations stops with one line naming the objective."""
    import json

    import pytest

    from copa.cli import main
    from copa.train.encoder_init import box_features

    tokens = torch.arange(12.0).view(1, 3, 4).repeat(2, 1, 1).requires_grad_()  # (2 boxes, 3 patches, 4)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    features = box_features(tokens, labels)
    assert torch.equal(features[0], (tokens[0, 0] + tokens[0, 2]).detach() / 2) and torch.equal(features[1], torch.zeros(4))
    features.sum().backward()
    assert tokens.grad[0, 1].abs().sum() == 0 and tokens.grad[1].abs().sum() == 0  # only the box's patches learn from it

    run_filter(fixture_world, load_params("fixture", params_dir=PARAMS_DIR).filter, tmp_path / "annotations", progress=False)
    common = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR), "--set", "pretrain.encoder_init.objective=captions_and_boxes",
              "--set", "pretrain.encoder_init.steps=2", "encoder-init", "--root", str(fixture_world)]
    assert main([*common, "--annotations", str(tmp_path / "annotations"), "--out", str(tmp_path / "init")]) == 0
    metrics = json.loads((tmp_path / "init" / "metrics.json").read_text())
    assert math.isfinite(metrics["train/box_contrastive"]) and metrics["train/loss"] > metrics["train/contrastive"]
    recorded = torch.load(tmp_path / "init" / "checkpoints" / "last.pt", weights_only=True)["resolved_params"]
    assert recorded["pretrain"]["encoder_init"]["objective"] == "captions_and_boxes" and "object_batch_size" in recorded["pretrain"]

    from copa.train.encoder_init import train_contrastive_encoders
    from copa.train.pretrain import PairSource

    params = load_params("fixture", ["pretrain.encoder_init.objective=captions_and_boxes"], params_dir=PARAMS_DIR)
    source = PairSource(params, fixture_world, tmp_path / "other")
    with pytest.raises(ValueError, match="objective is 'captions_and_boxes'.*--annotations"):
        train_contrastive_encoders(params, source.pair_data, source.vocab_file, tmp_path / "other" / "init")


def test_pta_draws_a_fresh_object_at_every_step(fixture_world, tmp_path):
    # Before: one elem and crop per (epoch, image), so an image met at several steps of an epoch
    # repeated the same example; and only a 5% share of the images with boxes took part.
    params = load_params("fixture", ["pretrain.steps_per_epoch=6", "pretrain.epochs=1"], params_dir=PARAMS_DIR)
    run_filter(fixture_world, params.filter, tmp_path / "annotations", progress=False)
    task = PretrainTask(params, fixture_world, tmp_path / "annotations", tmp_path / "run")
    objects = task.object_data.objects
    assert len(objects) == len(object_samples(tmp_path / "annotations", fixture_world))  # every image with boxes
    _, order = task._orders(0)
    b = params.pretrain.object_batch_size

    def drawn(steps: int) -> dict[int, set[int]]:
        per_image: dict[int, set[int]] = {}
        for step in range(steps):
            images, elems, _ = task.object_draws(order, 0, step)
            for i, j in zip(images.tolist(), elems.tolist()):
                per_image.setdefault(i, set()).add(j)
        return per_image

    assert any(len(js) > 1 for js in drawn(math.ceil(4 * len(objects) / b)).values())  # an image met again: another object
    summary = task.summary()
    assert summary["pta/draws"] == 6 * b
    assert summary["pta/distinct_examples"] == sum(len(js) for js in drawn(6).values())
    assert summary["pta/object_images"] == len(objects) and summary["pta/ambiguous_label_share"] == 0.0
    assert 0 < summary["pta/shared_text_share"] < 1  # texts with a same-text twin, labelled together (same_text)
    chosen = PretrainTask(load_params("fixture", ["pretrain.steps_per_epoch=6", "pretrain.epochs=1", "pretrain.pta_labels=chosen_box"],
                                      params_dir=PARAMS_DIR), fixture_world, tmp_path / "annotations", tmp_path / "run2")
    assert chosen.summary()["pta/ambiguous_label_share"] == summary["pta/shared_text_share"]
    # the batches are the draws: every rank's slice of the step's global object batch
    first = next(task.batches(0, rank=0, world_size=1, start=0))
    assert first["objects"]["images"].shape[0] == params.pretrain.object_batch_size
    # each pair's image id: equal exactly where two pairs of a batch show one image file (some batch does)
    repeats = 0
    for batch in task.batches(0, rank=0, world_size=1, start=0):
        pair_images, ids = batch["images"][0], batch["pairs"]["image_ids"].tolist()
        assert [[a == b for b in ids] for a in ids] == [[a == b for b in pair_images] for a in pair_images]
        repeats += len(set(ids)) < len(ids)
    assert repeats > 0


def test_pair_image_ids_number_the_image_files_in_order_of_appearance() -> None:
    pairs = [Pair(Path(p), "t", "coco") for p in ("a.jpg", "b.jpg", "a.jpg", "c.jpg", "b.jpg")]
    assert pair_image_ids(pairs) == [0, 1, 0, 2, 1]


def test_a_non_finite_loss_exits_naming_the_step_and_the_batchs_images(fixture_world, tmp_path, capsys, monkeypatch):
    from copa.cli import main
    from copa.models.pretraining import CopaPretraining

    forward = CopaPretraining.forward

    def diverged(self, batch):
        out = forward(self, batch)
        return {**out, "itm": out["itm"] * float("nan"), "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(CopaPretraining, "forward", diverged)
    params = load_params("fixture", params_dir=PARAMS_DIR)
    run_filter(fixture_world, params.filter, tmp_path / "annotations", progress=False)
    args = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR), "--set", "pretrain.encoder_init.method=none",
            "--set", "pretrain.steps_per_epoch=2", "pretrain", "--root", str(fixture_world), "--annotations",
            str(tmp_path / "annotations"), "--out", str(tmp_path / "run")]
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    first = PretrainTask(params, fixture_world, tmp_path / "annotations", tmp_path / "probe")
    pairs, objects = next(first.batches(0, 0, 1, 0))["images"]
    assert error.startswith(f"copa pretrain: error: {tmp_path / 'run'}: step 1 (epoch 1, batch 1): non-finite loss (loss = nan, itm = nan")
    assert f"pair images {', '.join(pairs)}; object images {', '.join(objects)}" in error
    assert len(pairs) == params.pretrain.batch_size and len(objects) == params.pretrain.object_batch_size
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_grad_clip_reaches_the_pretraining_engine(fixture_world, fixture_pretraining_run, tmp_path):
    """pretrain.grad_clip: the engine clips (and logs the norm before clipping); null, the default, does not."""
    import json

    from copa.cli import main

    annotations = fixture_pretraining_run.parent / "annotations"
    args = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR), "--set", "pretrain.steps_per_epoch=3", "--set", "pretrain.grad_clip=0.5",
            "pretrain", "--root", str(fixture_world), "--annotations", str(annotations), "--out", str(tmp_path / "run"),
            "--encoder-init", str(fixture_pretraining_run / "encoder_init")]
    assert main(args) == 0
    assert json.loads((tmp_path / "run" / "resolved_params.json").read_text())["engine"]["grad_clip"] == 0.5
    norms = logged(tmp_path / "run", "train/grad_norm")
    assert [step for step, _ in norms] == [step for step, _ in logged(tmp_path / "run")] and all(float(v) > 0 for _, v in norms)
    plain = fixture_pretraining_run / "dvclive" / "plots" / "metrics" / "train"
    assert (plain / "loss.tsv").is_file() and not (plain / "grad_norm.tsv").exists()  # null: logged, not clipped
