"""CIDEr-D with document frequencies fixed on a reference corpus: SCST's reward.

pycocoevalcap's ``Cider`` computes the document frequencies from the references of the images it
is asked to score, so called on one training batch it would weigh n-grams by that batch alone;
SCST needs them from the whole training corpus, once. The scoring below follows pycocoevalcap's
CIDEr-D definition exactly (TF-IDF n-gram vectors, n = 1..4, clipped hypothesis counts,
Gaussian length penalty with sigma 6, mean over references, x10; its "length" counts bigrams,
a quirk kept so that the numbers agree), and a test checks it against ``Cider`` when the corpus
is the scored set. Inputs are tokenized strings (words separated by spaces).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

NGRAM = 4
SIGMA = 6.0


def ngram_counts(text: str, n: int = NGRAM) -> Counter:
    words = text.split()
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


class CiderD:
    def __init__(self, corpus: Sequence[Sequence[str]], n: int = NGRAM, sigma: float = SIGMA):
        """``corpus``: the reference captions of each image."""
        if not corpus:
            raise ValueError("CIDEr-D needs a non-empty reference corpus")
        self.n, self.sigma = n, sigma
        self.document_frequency: Counter = Counter()
        for refs in corpus:
            self.document_frequency.update({g for ref in refs for g in ngram_counts(ref, n)})
        self.log_corpus_size = math.log(float(len(corpus)))

    def _vector(self, counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            weight = tf * (self.log_corpus_size - math.log(max(1.0, self.document_frequency[gram])))
            vec[k][gram] = weight
            norm[k] += weight * weight
            if k == 1:  # pycocoevalcap's length: the number of bigrams
                length += tf
        return vec, [math.sqrt(v) for v in norm], length

    def _similarity(self, hyp, ref) -> list[float]:
        (vh, nh, lh), (vr, nr, lr) = hyp, ref
        penalty = math.exp(-((lh - lr) ** 2) / (2 * self.sigma ** 2))
        out = []
        for k in range(self.n):
            value = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
            if nh[k] != 0 and nr[k] != 0:
                value /= nh[k] * nr[k]
            out.append(value * penalty)
        return out

    def score(self, candidate: str, references: Sequence[str]) -> float:
        hyp = self._vector(ngram_counts(candidate, self.n))
        total = [0.0] * self.n
        for ref in references:
            total = [a + b for a, b in zip(total, self._similarity(hyp, self._vector(ngram_counts(ref, self.n))))]
        return 10.0 * (sum(total) / self.n) / len(references)
