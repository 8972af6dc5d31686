"""Where each official file lives under a data root: one place for every path convention.

```
<root>/coco/annotations/instances_{train2014,val2014}.json, captions_{...}.json,
                        image_info_test2015.json
<root>/coco/{train2014,val2014,test2015}/COCO_<split>_<id:012d>.jpg
<root>/vg/image_data.json, objects.json, attributes.json, region_descriptions.json
<root>/vg/VG_100K/<id>.jpg  (or VG_100K_2, as each image's url says)
<root>/cc3m/Train_GCC-training.tsv, Validation_GCC-1.1.0-Validation.tsv, images/...
<root>/vqa/v2_OpenEnded_mscoco_<split>_questions.json, v2_mscoco_<split>_annotations.json
<root>/refcoco+/refs(unc).p, instances.json          (images from coco/train2014)
<root>/karpathy/dataset_coco.json, dataset_flickr30k.json
<root>/flickr30k/flickr30k-images/<id>.jpg
<root>/reference_boxes/oracle.jsonl                  (synthetic world only: Figure 5 stand-in)
<root>/referents.json                                (synthetic world only: the boxes each text refers to)
<root>/synthetic_manifest.json                       (synthetic world only: what was generated)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from copa.data.formats import refcoco, vqa, web_pairs

COCO_ANNOTATED_SPLITS = ("train2014", "val2014")
COCO_TEST_SPLIT = "test2015"
VQA_SPLITS = ("train2014", "val2014", "test2015")


@dataclass(frozen=True)
class DataLayout:
    root: Path

    @property
    def coco(self) -> Path:
        return self.root / "coco"

    def coco_images(self, split: str) -> Path:
        return self.coco / split

    def coco_instances(self, split: str) -> Path:
        return self.coco / "annotations" / f"instances_{split}.json"

    def coco_captions(self, split: str) -> Path:
        return self.coco / "annotations" / f"captions_{split}.json"

    def coco_image_info(self, split: str) -> Path:
        return self.coco / "annotations" / f"image_info_{split}.json"

    @property
    def vg(self) -> Path:
        return self.root / "vg"

    @property
    def vg_image_data(self) -> Path:
        return self.vg / "image_data.json"

    @property
    def vg_objects(self) -> Path:
        return self.vg / "objects.json"

    @property
    def vg_attributes(self) -> Path:
        return self.vg / "attributes.json"

    @property
    def vg_regions(self) -> Path:
        return self.vg / "region_descriptions.json"

    @property
    def cc3m(self) -> Path:
        return self.root / "cc3m"

    def cc3m_tsv(self, split: str) -> Path:
        return self.cc3m / {"train": web_pairs.TRAIN_FILE, "val": web_pairs.VAL_FILE}[split]

    @property
    def vqa(self) -> Path:
        return self.root / "vqa"

    def vqa_questions(self, split: str) -> Path:
        return self.vqa / vqa.questions_file(split)

    def vqa_annotations(self, split: str) -> Path:
        return self.vqa / vqa.annotations_file(split)

    @property
    def refcoco(self) -> Path:
        return self.root / "refcoco+"

    @property
    def refcoco_refs(self) -> Path:
        return self.refcoco / refcoco.REFS_FILE

    @property
    def refcoco_instances(self) -> Path:
        return self.refcoco / refcoco.INSTANCES_FILE

    @property
    def karpathy(self) -> Path:
        return self.root / "karpathy"

    @property
    def karpathy_coco(self) -> Path:
        return self.karpathy / "dataset_coco.json"

    @property
    def karpathy_flickr(self) -> Path:
        return self.karpathy / "dataset_flickr30k.json"

    @property
    def flickr_images(self) -> Path:
        return self.root / "flickr30k" / "flickr30k-images"

    @property
    def oracle_reference_boxes(self) -> Path:
        return self.root / "reference_boxes" / "oracle.jsonl"

    @property
    def referents(self) -> Path:
        return self.root / "referents.json"

    @property
    def manifest(self) -> Path:
        return self.root / "synthetic_manifest.json"
