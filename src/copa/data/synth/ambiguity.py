"""Does each text of a synthetic world have one right answer? (issue 19)

Reads a world's written texts back against its scenes (drawn again from the manifest's seed) with
the rules of meaning.py, and counts per kind the texts that fit several objects (pairs) or have
several right answers (``several``), fit nothing (``none``), or whose one right answer is not the one
the files give (``wrong``): a region whose box is not its referent's, a ref whose box is another
object's, a question whose right answer fewer than 3 of its 10 humans gave (it would not earn full
VQA accuracy; e.g. "no" to a relation that holds). All three should be 0. Judging by 3 humans, not
by the majority answer, keeps the world's injected annotator noise (``answer_noise``), which
flips a majority now and then, out of the count.

COCO / VG object texts are class-label templates ("This is a square."): such a text has several
right patches wherever its class has several instances in the image, unless its patch labels
cover all of them; those are counted apart (``class_texts_with_several_instances``), not as defects
of the world.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from copa.data.formats import coco, refcoco, visual_genome, vqa
from copa.data.formats.records import Box, load_json
from copa.data.layout import VQA_SPLITS, DataLayout
from copa.data.synth.meaning import fitting, parse_description, parse_relation, readings
from copa.data.synth.scene import Scene, SceneObject, holds, holds_loosely, union_box
from copa.data.synth.world import manifest_scene

COLOUR_QUESTION = re.compile(r"what color is the (.+)\?")
SHAPE_QUESTION = re.compile(r"what shape is the (.+)\?")
RELATION_QUESTION = re.compile(r"is the (.+)\?")
TEXT_KINDS = ("region_descriptions", "colour_questions", "shape_questions", "relation_questions", "referring_expressions")
OUTCOMES = ("one", "several", "none", "wrong")
FULL_CREDIT_HUMANS = 3  # VQA accuracy min(1, #humans giving the answer / 3)


def referents(text: str, scene: Scene) -> list | None:
    """The objects a description fits, or the (subject, anchor) pairs a relation description fits;
    None for a text outside the world's grammar."""
    if (rel := parse_relation(text)) is not None:
        return readings(rel, scene)
    if (desc := parse_description(text)) is not None:
        return fitting(desc, scene)
    return None


def right_answers(question: str, scene: Scene) -> tuple[str, set[str]] | None:
    """(kind, the answers that are right on some reading) for a question that names objects; None
    for the others (counts and existence questions take every object their words fit)."""
    if m := COLOUR_QUESTION.fullmatch(question):
        return "colour_questions", {o.colour for o in referents(m.group(1), scene) or []}
    if m := SHAPE_QUESTION.fullmatch(question):
        return "shape_questions", {o.shape for o in referents(m.group(1), scene) or []}
    if (m := RELATION_QUESTION.fullmatch(question)) and (rel := parse_relation(m.group(1))) is not None:
        answers = set()
        for a in fitting(rel.subject, scene):
            for b in fitting(rel.anchor, scene):
                if a is not b:  # the relation read as whole boxes, or as centres
                    answers |= {"yes" if reads(a, rel.relation, b) else "no" for reads in (holds, holds_loosely)}
        return "relation_questions", answers
    return None


def outcome(found: list | set | None, is_right) -> str:
    """``one`` / ``several`` / ``none`` / ``wrong`` for what a text fits (objects, pairs or answers)."""
    if not found:
        return "none"
    if len(found) > 1:
        return "several"
    return "one" if is_right(next(iter(found))) else "wrong"


class _Counts:
    def __init__(self):
        self.kinds = {kind: Counter({o: 0 for o in OUTCOMES}) for kind in TEXT_KINDS}

    def add(self, kind: str, result: str) -> None:
        self.kinds[kind][result] += 1

    def report(self) -> dict[str, dict[str, int]]:
        return {kind: {"items": sum(c.values()), **{o: c[o] for o in OUTCOMES if o != "one"}} for kind, c in self.kinds.items()}


def ambiguity_report(root: str | Path) -> dict[str, dict[str, int]]:
    """Per kind of text: items, several, none, wrong; plus the object class texts of the PTA
    files whose class has several instances in the image."""
    lay = DataLayout(Path(root))
    manifest = load_json(lay.manifest)
    params = manifest["params"]
    scenes: dict[tuple[str, int], Scene] = {}

    def scene(pool: str, image_id: int) -> Scene:
        if (pool, image_id) not in scenes:
            scenes[pool, image_id] = manifest_scene(params, pool, image_id)
        return scenes[pool, image_id]

    counts = _Counts()
    # VG region descriptions (the clean ones: the injected copies are the filter's business)
    injected = _injected_ids(manifest, lay, lay.vg_regions)
    images = visual_genome.read_image_data(lay.vg_image_data, lay.vg, check_files=False)
    for region in visual_genome.read_regions(lay.vg_regions, images):
        if region.region_id not in injected:
            found = referents(region.phrase, scene("vg", region.image_id))
            counts.add("region_descriptions", outcome(found, lambda r: region.box in _boxes_of(r)))
    # VQA questions that name an object
    for split in VQA_SPLITS:
        data = vqa.read_split(lay.vqa, split)
        for q in data.questions:
            checked = right_answers(q.question, scene(f"coco_{split}", q.image_id))
            if checked is not None:
                kind, answers = checked
                humans = data.answers[q.question_id].answers
                counts.add(kind, outcome(answers, lambda a: humans.count(a) >= FULL_CREDIT_HUMANS))
    # RefCOCO+ expressions
    refs = refcoco.read_refcoco(lay.refcoco, lay.coco_images("train2014"), check_files=False)
    for ref in refs.refs:
        for sentence in ref.sentences:
            found = referents(sentence, scene("coco_train2014", ref.image_id))
            counts.add("referring_expressions", outcome(found, lambda o: o.box == ref.box))
    return {**counts.report(), **_class_texts(manifest, lay, scene)}


def _boxes_of(referent: SceneObject | tuple[SceneObject, SceneObject]) -> set[Box]:
    """A region's box may be its object's, or for a relation its subject's or the pair's union."""
    if isinstance(referent, tuple):
        return {referent[0].box, union_box(referent[0].box, referent[1].box)}
    return {referent.box}


def _injected_ids(manifest: dict, lay: DataLayout, path: Path) -> set[int]:
    entry = manifest["defects"][path.relative_to(lay.root).as_posix()]
    return {i for kind in entry["injected"].values() for i in kind["ids"]}


def _class_texts(manifest: dict, lay: DataLayout, scene) -> dict[str, dict[str, int]]:
    """Clean object records of the PTA files (COCO train2014 instances, VG objects) whose class has
    another instance in the image; checks on the way that the files hold the scenes' boxes."""
    coco_injected = _injected_ids(manifest, lay, lay.coco_instances("train2014"))
    instances = coco.read_instances(lay.coco_instances("train2014"), lay.coco_images("train2014"), check_files=False)
    coco_objects = [(o.image_id, instances.categories[o.category_id].name, o.box) for o in instances.objects if o.ann_id not in coco_injected]
    vg_injected = _injected_ids(manifest, lay, lay.vg_objects)
    images = visual_genome.read_image_data(lay.vg_image_data, lay.vg, check_files=False)
    vg_objects = [(o.image_id, o.names[0], o.box) for o in visual_genome.read_objects(lay.vg_objects, images) if o.object_id not in vg_injected]
    out = {}
    for name, pool, objects in (("coco_objects", "coco_train2014", coco_objects), ("vg_objects", "vg", vg_objects)):
        by_image: dict[int, list] = {}
        for i, n, b in objects:
            by_image.setdefault(i, []).append((n, b))
        for image_id, written in by_image.items():
            if sorted((o.shape, o.box) for o in scene(pool, image_id).objects) != sorted(written):
                raise ValueError(f"{lay.root}: image {image_id} of {name} does not hold the objects of the scene its manifest draws")
        per_class = Counter((i, n) for i, n, _ in objects)
        out[f"class_texts_with_several_instances/{name}"] = {"items": len(objects), "several": sum(per_class[(i, n)] > 1 for i, n, _ in objects)}
    return out
