"""CIDEr-D with corpus document frequencies (copa.eval.cider, SCST's reward) against
pycocoevalcap's Cider, and the base-model growth grounding relies on (extend_vocabulary)."""

from __future__ import annotations

import random

import pytest
import torch
from pycocoevalcap.cider.cider import Cider

from copa.eval.cider import CiderD

WORDS = "a the red blue green circle square star ring image with and one two other small large striped".split()


def _caption(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pycocoevalcap_when_the_corpus_is_the_scored_set(seed: int) -> None:
    rng = random.Random(seed)
    refs = {i: [_caption(rng, 3, 12) for _ in range(rng.randint(1, 5))] for i in range(25)}
    hyps = {i: [_caption(rng, 1, 14)] for i in refs}
    hyps[0] = [refs[0][0]]  # a perfect match, and an empty-overlap one
    hyps[1] = ["zebra"]
    mean, theirs = Cider().compute_score(refs, hyps)
    cider = CiderD(list(refs.values()))
    ours = [cider.score(hyps[i][0], refs[i]) for i in refs]
    assert ours == pytest.approx(list(theirs), abs=1e-12)
    assert ours[1] == 0.0 and ours[0] > max(ours[2:])


def test_document_frequencies_come_from_the_corpus_not_the_scored_batch() -> None:
    corpus = [["a red circle"], ["a red star"], ["a blue ring"], ["a red square"]]
    cider = CiderD(corpus)
    assert cider.document_frequency[("red",)] == 3 and cider.document_frequency[("a",)] == 4
    # a rare word shared with the reference counts more than a common one
    assert cider.score("blue", ["a blue ring"]) > cider.score("a", ["a blue ring"])


def test_extend_vocabulary_keeps_the_old_rows(tmp_path) -> None:
    from copa.config import load_params
    from copa.models.copa import CopaModel
    from copa.tasks.base import extend_vocabulary
    from copa.train.build import copa_spec
    from copa.train.pretrain import VOCAB_DIR
    from conftest import PARAMS_DIR

    params = load_params("fixture", params_dir=PARAMS_DIR)
    (tmp_path / VOCAB_DIR).mkdir()
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(11)]
    (tmp_path / VOCAB_DIR / "vocab.txt").write_text("".join(t + "\n" for t in tokens))
    torch.manual_seed(0)
    model = CopaModel(copa_spec(params, len(tokens))).eval()
    grown, tokenizer = extend_vocabulary(model, params, tmp_path, ["[coord_0]", "[coord_1]", "w3"], seed=0)
    assert len(tokenizer) == len(tokens) + 2 and grown.spec.vocab_size == len(tokens) + 2
    old, new = model.state_dict(), grown.state_dict()
    for key, value in old.items():
        assert torch.equal(new[key][: value.shape[0]], value) if new[key].shape != value.shape else torch.equal(new[key], value), key
    assert new["decoder.head.decoder.weight"].data_ptr() == new["decoder.embeddings.word_embeddings.weight"].data_ptr()  # still tied
    ids = torch.tensor([[2, 5, 6, 3]])
    with torch.no_grad():  # the old tokens' text states are unchanged
        assert torch.allclose(model.encode_text(ids, torch.ones_like(ids)), grown.encode_text(ids, torch.ones_like(ids)))
