"""The VQA state probes (copa.tasks.vqa_probe): per question type, ridge probes from a model's
states to the answer, with the question-only state as the control."""

from pathlib import Path

import torch
from torch import nn

from copa.data.downstream import VQAExample
from copa.tasks.vqa_probe import state_probes

COLOURS = ("red", "green", "blue")


class ImageReadingModel(nn.Module):
    """A stand-in CopaModel whose fused text [CLS] is the image's colour (one-hot in its first
    pixels) and whose text [CLS] is the same for every question: the image reaches the question."""

    def encode_text(self, input_ids, attention_mask):
        return torch.ones(len(input_ids), input_ids.shape[1], 4)

    def encode_image(self, images, guide, use_detector, targets=None):
        return {"tokens": images.flatten(1)[:, None, :4].repeat(1, 3, 1)}  # (B, 1 + 2 patches, 4)

    def fuse(self, image, text, mask):
        return image, torch.cat([image[:, :1], text[:, 1:]], 1)


class Questions:
    """The (image, question) inputs the probe reads: pixel c of the image is 1 for colour c."""

    def __init__(self, examples):
        self.examples = examples

    def __getitem__(self, i):
        image = torch.zeros(3, 2, 2)
        image.view(-1)[COLOURS.index(self.examples[i].answers[0])] = 1.0
        return {"image": image, "input_ids": torch.tensor([1, 5, 2]), "attention_mask": torch.ones(3, dtype=torch.long)}

    def collate_fn(self, items):
        return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def _questions(ids, question_type="what color is the"):
    return [VQAExample(i, Path(f"{i}.jpg"), "what color is the star?", (COLOURS[i % 3],) * 10, "other", question_type) for i in ids]


def test_a_fused_state_that_holds_the_answer_probes_far_above_the_question_alone():
    train, test = _questions(range(60)), _questions(range(100, 130))
    probes = state_probes(ImageReadingModel(), Questions, train, test, per_type=45, seed=0)
    colour = probes["what color is the"]
    assert colour["fitted"] == 45 and colour["tested"] == 30  # per_type caps the training questions, every test one is probed
    assert colour["fused_text"] == 100.0 and colour["fused_image"] == 100.0
    assert colour["question_only"] == colour["majority"] < 50.0  # one state for every question: the majority answer at best


def test_a_question_type_with_one_answer_or_no_evaluated_question_is_left_out():
    train = _questions(range(0, 30, 3)) + _questions(range(30), "how many") + _questions(range(30), "is there a")
    test = _questions(range(100, 103)) + _questions(range(100, 103), "how many")
    probes = state_probes(ImageReadingModel(), Questions, train, test, per_type=100)
    assert set(probes) == {"how many"}  # "what color is the": every training answer is red; "is there a": not evaluated
