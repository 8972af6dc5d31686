"""The perception bracket (issue 23): scene grids (copa.data.scene_grid), the perfect image tokens
built from them (copa.models.scene_tokens), and the VQA and grounding fine-tunes with them end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from copa.cli import main
from copa.config import ParamsError, load_params
from copa.data.downstream import vqa_examples
from copa.data.formats import coco
from copa.data.formats.records import Box, FormatError, load_json
from copa.data.layout import DataLayout
from copa.data.patch_labels import patch_coverage, resize_boxes
from copa.data.scene_grid import ATTRIBUTES, named_object_grids, scene_grid, scene_grids
from copa.data.synth.world import manifest_scene
from copa.data.synth.scene import Scene, SceneObject
from copa.models.scene_tokens import SceneTokens

PARAMS_DIR = Path(__file__).parents[1] / "params"
BASE = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR)]
NONE = [len(values) for values in ATTRIBUTES.values()]  # "no object" per attribute


def _values(obj: SceneObject) -> list[int]:
    return [ATTRIBUTES[a].index(getattr(obj, a)) for a in ATTRIBUTES]


def test_each_patch_gets_the_object_covering_most_of_it_and_every_object_a_patch() -> None:
    big = SceneObject("star", "red", "large", "solid", Box(0, 0, 40, 40))  # 200 x 100 px image -> 64 x 64: x / 3.125, y / 1.5625
    small = SceneObject("ring", "blue", "small", "dotted", Box(150, 70, 12, 12))  # 3.84 x 7.68 px: under a quarter of any patch
    scene = Scene(200, 100, "in_domain", "white", "plain", (big, small))
    grid = scene_grid(scene, 64, 16).reshape(4, 4, len(ATTRIBUTES))
    # the star spans x 0-12.8, y 0-25.6: 80% of patch (0, 0), 12.8 x 9.6 = 48% of (1, 0); (0, 1) and (1, 1) not at all
    assert grid[0, 0].tolist() == _values(big) and grid[1, 0].tolist() == _values(big)
    assert grid[2, 0].tolist() == NONE and grid[0, 1].tolist() == NONE
    # the ring (x 48-51.8, y 44.8-52.5) covers patches (2, 3) and (3, 3) a little: it keeps (3, 3), covered most
    ring = [tuple(int(i) for i in p) for p in np.argwhere((grid == _values(small)).all(-1))]
    assert ring == [(3, 3)]
    assert (grid == NONE).all(-1).sum() == 16 - 3


def test_a_small_object_takes_a_patch_its_neighbour_can_spare() -> None:
    thin = SceneObject("square", "red", "small", "solid", Box(0, 0, 16, 5))  # 31% of patch (0, 0): its only patch
    tiny = SceneObject("cross", "blue", "small", "solid", Box(10, 6, 8, 4))  # 24 px² of (0, 0), 8 px² of (0, 1)
    grid = scene_grid(Scene(64, 64, "in_domain", "white", "plain", (thin, tiny)), 64, 16).reshape(4, 4, len(ATTRIBUTES))
    assert grid[0, 0].tolist() == _values(thin) and grid[0, 1].tolist() == _values(tiny)


def test_scene_grids_of_the_world_hold_its_objects(fixture_world) -> None:
    layout = DataLayout(fixture_world)
    questions = vqa_examples(layout, "val2014")
    grids = scene_grids(layout, [q.image for q in questions], 64, 16)
    assert set(grids) == {q.image for q in questions}
    instances = load_json(layout.coco_instances("val2014"))
    shapes = {c["id"]: c["name"] for c in instances["categories"]}
    for image in sorted(grids)[:5]:
        image_id = coco.image_id("val2014", image.name)
        scene = manifest_scene(load_json(layout.manifest)["params"], "coco_val2014", image_id)
        # the scene is the one the world's files describe: its boxes and shapes are the image's annotations
        annotated = {(tuple(a["bbox"]), shapes[a["category_id"]]) for a in instances["annotations"] if a["image_id"] == image_id}
        assert {(tuple(o.box), o.shape) for o in scene.objects} <= annotated
        assert grids[image].shape == (16, len(ATTRIBUTES))
        for obj in scene.objects:  # each object holds a patch, and only patches its box touches (square-resized to 64 px)
            box = resize_boxes([obj.box.as_list()], np.array([scene.width]), np.array([scene.height]), 64)
            touched = patch_coverage(box, 64, 16).reshape(-1) > 0
            owned = (grids[image] == torch.tensor(_values(obj))).all(-1).numpy()
            assert owned.any() and not (owned & ~touched).any(), f"{image.name}: {obj}"

    with pytest.raises(FormatError, match="elsewhere.jpg"):
        scene_grids(layout, [fixture_world / "elsewhere.jpg"], 64, 16)


def test_scene_grids_need_the_manifest(fixture_world, tmp_path) -> None:
    root = tmp_path / "world"
    shutil.copytree(fixture_world / "coco", root / "coco")
    with pytest.raises(FileNotFoundError, match="synthetic_manifest.json: not found"):
        scene_grids(DataLayout(root), [], 64, 16)


def test_scene_tokens_are_a_fixed_code_of_the_attributes() -> None:
    counts = [len(values) for values in ATTRIBUTES.values()]
    grids = torch.tensor([[NONE, [1, 2, 0, 1], [1, 2, 0, 1], [3, 2, 0, 1]]])  # (1, 4 patches, 4 attributes)
    first, again = SceneTokens(counts, 32)(grids)["tokens"], SceneTokens(counts, 32)(grids, "ignored", targets=None)["tokens"]
    assert first.shape == (1, 5, 32) and torch.equal(first, again)  # [CLS] + 4 patches, the same code in every model
    assert torch.allclose(first.mean(-1), torch.zeros(1, 5), atol=1e-5)  # LayerNorm-ed
    # patches 1 and 2 hold the same object at different places (the position is part of the token)
    assert not torch.allclose(first[0, 2], first[0, 3])
    other = grids.clone()
    other[0, 1, 0] = 5  # patch 1: another shape, the same colour, size and texture
    reshaped = SceneTokens(counts, 32)(other)["tokens"]
    assert torch.allclose(reshaped[0, 3], first[0, 3]) and not torch.allclose(reshaped[0, 2], first[0, 2])
    with pytest.raises(ValueError, match=r"\(B, n, 4\)"):
        SceneTokens(counts, 32)(torch.zeros(1, 4, dtype=torch.long))


def _oracle_run(task: str, fixture_world: Path, pretrained: Path, tmp_path: Path) -> tuple[Path, dict]:
    """Fine-tune ``task`` with finetune.<task>.perception oracle (twice: the second resumes the finished
    run, nothing to train) and evaluate it: (the run, its record). Checks what every bracket run keeps:
    the oracle in its parameters and record, the fusion's weights and no ViT's."""
    run, out = tmp_path / task, tmp_path / f"{task}.json"
    finetune = BASE + ["--set", f"finetune.{task}.perception=oracle", "finetune", "--task", task, "--pretrained", str(pretrained),
                       "--root", str(fixture_world), "--out", str(run)]
    assert main(finetune) == 0
    assert main(finetune) == 0
    assert main(BASE + ["evaluate", "--task", task, "--run", str(run), "--root", str(fixture_world), "--json", str(out), "--quiet"]) == 0
    record = json.loads(out.read_text())
    state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert record["perception"] == state["resolved_params"]["model"]["perception"] == "oracle"
    assert not [k for k in state["model"] if k.startswith("model.vision.")]  # no ViT: nothing of the image is learned
    assert any(k.startswith("model.fusion.") for k in state["model"])
    return run, record


def test_grounding_with_perfect_perception_end_to_end(fixture_world, fixture_pretraining_run, tmp_path, capsys) -> None:
    from copa.data.downstream import grounding_examples
    from copa.tasks.grounding import TRAIN_SPLIT, _data
    from copa.train.finetune import load_finetuned

    run, record = _oracle_run("grounding", fixture_world, fixture_pretraining_run, tmp_path)
    assert "perception oracle (the scene's image tokens): grounding acc@0.5" in capsys.readouterr().out
    assert record["oracle_objects"] == "all"  # what the bracket's tokens showed, in its record
    assert all(0.0 <= s["acc@0.5"] <= 100.0 for s in record["splits"].values())
    # the model reads each expression's own image's grid (RefCOCO+'s images are train2014's)
    fine = load_finetuned(run)
    layout = DataLayout(fixture_world)
    examples = grounding_examples(layout, TRAIN_SPLIT)[:4]
    data = _data(examples, fine.tokenizer, fine.params, layout)
    expected = scene_grids(layout, [e.image for e in examples], 64, 16)
    assert all(torch.equal(data[i]["image"], expected[e.image]) for i, e in enumerate(examples))
    # with oracle_objects named, each expression's own object alone (the bracket's read-out without the lookup)
    named = load_params("fixture", ["model.perception=oracle", "finetune.grounding.perception=oracle",
                                    "finetune.grounding.oracle_objects=named"], params_dir=PARAMS_DIR)
    alone = _data(examples, fine.tokenizer, named, layout)
    assert all(torch.equal(alone[i]["image"], g) for i, g in
               enumerate(named_object_grids(layout, [e.image for e in examples], [e.box for e in examples], 64, 16)))
    assert any(not torch.equal(alone[i]["image"], expected[e.image]) for i, e in enumerate(examples))


def test_named_object_grids_hold_that_object_alone(fixture_world) -> None:
    from copa.data.downstream import grounding_examples

    layout = DataLayout(fixture_world)
    examples = [e for e in grounding_examples(layout, "val") if len(e.objects) > 1][:6]
    assert examples
    grids = named_object_grids(layout, [e.image for e in examples], [e.box for e in examples], 64, 16)
    world = load_json(layout.manifest)["params"]
    for example, grid in zip(examples, grids):
        scene = manifest_scene(world, "coco_train2014", coco.image_id("train2014", example.image.name))
        (obj,) = [o for o in scene.objects if tuple(o.box) == tuple(example.box)]
        alone = Scene(scene.width, scene.height, scene.domain, scene.background, scene.background_texture, (obj,))
        assert torch.equal(grid, torch.from_numpy(scene_grid(alone, 64, 16)))
        held = (grid != torch.tensor(NONE)).any(-1)  # the object's patches; every other one says "no object"
        assert held.any() and (grid[held] == torch.tensor(_values(obj))).all()
    with pytest.raises(FormatError, match=f"{examples[0].image.name}.*no object's"):
        named_object_grids(layout, [examples[0].image], [Box(0, 0, 1, 1)], 64, 16)


def test_named_objects_need_the_perception_oracle() -> None:
    with pytest.raises(ParamsError, match="key 'finetune.grounding.oracle_objects' = named: must be all unless "
                                          "finetune.grounding.perception is oracle"):
        load_params("fixture", ["finetune.grounding.oracle_objects=named"], params_dir=PARAMS_DIR)


def test_vqa_with_perfect_perception_end_to_end(fixture_world, fixture_pretraining_run, tmp_path, capsys) -> None:
    run, record = _oracle_run("vqa", fixture_world, fixture_pretraining_run, tmp_path)
    assert 0.0 <= record["overall"] <= 100.0
    assert record["instruments"]["state_probes"]  # the probes read the same grids

    # the model's inputs: each question's own image's grid, and in the swap control the other image's
    from copa.tasks.vqa import question_data, swap_images
    from copa.train.finetune import load_finetuned

    fine = load_finetuned(run)
    layout = DataLayout(fixture_world)
    questions = vqa_examples(layout, "val2014")[:6]
    for asked in (questions, swap_images(vqa_examples(layout, "val2014"))[:6]):
        data = question_data(asked, fine.tokenizer, fine.params, layout)
        expected = scene_grids(layout, [q.image for q in asked], 64, 16)
        assert all(torch.equal(data[i]["image"], expected[q.image]) for i, q in enumerate(asked))

    # what needs the ViT refuses the run in one line
    from copa.eval.cost_inputs import protocol_model
    from copa.report.detected_patches import detect_patches

    with pytest.raises(ParamsError, match="model.perception oracle: the cost protocol needs the ViT"):
        protocol_model(fine.params, 50, fine.params.efficiency)
    with pytest.raises(ParamsError, match=r"model.perception oracle: Figure 4 \(the TPD's detections\) needs the ViT"):
        detect_patches(fine, questions[:2], [0.5], fine.params.evaluate.vqa)
    # the bracket keeps every patch: a selection beside it is refused
    assert main(BASE + ["--set", "finetune.vqa.perception=oracle", "--set", "finetune.vqa.selection=random", "finetune", "--task", "vqa",
                        "--pretrained", str(fixture_pretraining_run), "--root", str(fixture_world), "--out", str(tmp_path / "other")]) == 2
    assert "finetune.vqa.perception oracle keeps every patch: finetune.vqa.selection must be null, got random" in capsys.readouterr().err


def test_what_trains_the_vit_refuses_perfect_perception() -> None:
    from copa.train.build import build_pretraining, single_stream_spec

    params = load_params("fixture", ["model.perception=oracle"], params_dir=PARAMS_DIR)
    with pytest.raises(ParamsError, match="model.perception oracle: pretraining needs the ViT"):
        build_pretraining(params, tokenizer=None)  # refused before the vocabulary is read
    with pytest.raises(ParamsError, match="model.perception oracle: the single-stream model needs the ViT"):
        single_stream_spec(params, 50)
    from copa.train.encoder_init import train_contrastive_encoders

    with pytest.raises(ParamsError, match="model.perception oracle: the contrastive encoder init needs the ViT"):
        train_contrastive_encoders(params, pair_data=None, vocab_file=Path("unread"), init_dir=Path("unwritten"))
