"""WordPiece vocabulary training and loading for the project's own (non-BERT-base) vocabularies.

Special tokens come first, in this order, so their ids are fixed whatever the corpus:
``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4`` (bert-base-uncased instead has [PAD]=0,
[UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103; code must read ids from the tokenizer, never
hard-code them). Then the character alphabet (word-initial characters, then ``##``
continuations, each sorted), then the learned merges in the order they were learned.

Normalisation and pre-tokenisation are ``tokenizers``' BERT components (lower-case, accents
stripped, split on whitespace and punctuation): the exact pipeline ``BertTokenizer`` applies at
load time. The merge loop is our own: ``tokenizers``' WordPiece trainer breaks ties between
equally frequent pairs by per-process hash order, so the same texts gave a different vocab.txt in
each of 4 runs (measured with tokenizers 0.23.3). Here ties go to the lexicographically smallest
pair, so the same texts always give a byte-identical vocab.txt.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from tokenizers import normalizers, pre_tokenizers
from transformers import BertTokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONTINUATION = "##"  # BERT's prefix for a piece that continues a word


def _word_counts(texts: Iterable[str]) -> Counter[str]:
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))  # [(word, span)]
        counts.update(word for word, _ in words)
    return counts


def _merge(a: str, b: str) -> str:
    """'ab' from 'a' + '##b'; '##ab' from '##a' + '##b'."""
    return a + b.removeprefix(CONTINUATION)


def _pairs(symbols: list[str]) -> Iterable[tuple[str, str]]:
    return zip(symbols, symbols[1:])


def _learn_merges(
    counts: Counter[str], budget: int, min_frequency: int
) -> tuple[list[str], list[str]]:
    """Greedy pair merging (as the WordPiece trainers in BERT and ``tokenizers`` do), deterministic.

    Returns (alphabet, merged tokens in learning order); at most ``budget`` tokens in all.
    """
    words = [[w[0], *(CONTINUATION + c for c in w[1:])] for w in sorted(counts)]
    freq = [counts[w] for w in sorted(counts)]
    alphabet = sorted({s for w in words for s in w}, key=lambda s: (s.startswith(CONTINUATION), s))
    vocab = set(alphabet)
    merges: list[str] = []

    pair_count: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for i, symbols in enumerate(words):
        for pair in _pairs(symbols):
            pair_count[pair] += freq[i]
            where[pair].add(i)
    # Max-heap on count, ties to the smallest pair; stale entries are skipped when popped.
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)

    while heap and len(alphabet) + len(merges) < budget:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg:
            continue  # stale
        if -neg < min_frequency:
            break
        token = _merge(*pair)
        if token not in vocab:
            vocab.add(token)
            merges.append(token)
        changed: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair)):
            old = words[i]
            new: list[str] = []
            j = 0
            while j < len(old):
                if j + 1 < len(old) and (old[j], old[j + 1]) == pair:
                    new.append(token)
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            for p in _pairs(old):
                pair_count[p] -= freq[i]
                where[p].discard(i)
                changed.add(p)
            for p in _pairs(new):
                pair_count[p] += freq[i]
                where[p].add(i)
                changed.add(p)
            words[i] = new
        pair_count.pop(pair, None)
        for p in sorted(changed - {pair}):
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
    return alphabet, merges


def train_wordpiece(
    texts: Iterable[str], vocab_size: int, out_dir: Path, *, min_frequency: int = 2
) -> Path:
    """Learn a WordPiece vocabulary of at most ``vocab_size`` tokens; write ``out_dir/vocab.txt``.

    Fewer tokens are written when the corpus runs out of pairs seen ``min_frequency`` times
    (``tokenizers``' default for BERT WordPiece is 2). The whole alphabet is always kept, so every
    word of the training texts can be tokenised without [UNK].
    """
    counts = _word_counts(texts)
    alphabet, merges = _learn_merges(counts, vocab_size - len(SPECIAL_TOKENS), min_frequency)
    if len(SPECIAL_TOKENS) + len(alphabet) > vocab_size:
        raise ValueError(
            f"vocab_size={vocab_size} is smaller than the {len(SPECIAL_TOKENS)} special tokens plus "
            f"the {len(alphabet)}-symbol alphabet of the training texts"
        )
    tokens = [*SPECIAL_TOKENS, *alphabet, *merges]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "vocab.txt"
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return path


def train_word_vocabulary(texts: Iterable[str], out_dir: Path) -> Path:
    """A whole-word vocabulary: the special tokens, then every word of ``texts`` (as the same
    normalisation and pre-tokenisation split them), most frequent first, ties in alphabetical order;
    written to ``out_dir/vocab.txt`` for :func:`load_tokenizer`. It has no ``##`` pieces, so a word
    the texts lack is one [UNK] (a model with word embeddings, not word pieces: copa.models.film)."""
    counts = _word_counts(texts)
    words = sorted(counts, key=lambda w: (-counts[w], w))  # punctuation is split off: no word is a [special] token
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "vocab.txt"
    path.write_text("".join(t + "\n" for t in (*SPECIAL_TOKENS, *words)), encoding="utf-8")
    return path


def load_tokenizer(vocab_path: Path) -> BertTokenizer:
    """A lower-casing BERT WordPiece tokenizer over ``vocab_path`` (one token per line, id = line).

    transformers 5.23 trap (ENVIRONMENT.md): ``BertTokenizer`` / ``BertTokenizerFast`` silently
    ignore ``vocab_file=`` and map everything to [UNK]; the vocabulary must go in as ``vocab=``.
    We read the file ourselves and pass the dict, so the ids are exactly the line numbers.
    """
    lines = vocab_path.read_text(encoding="utf-8").splitlines()
    vocab = {token: i for i, token in enumerate(lines)}
    if len(vocab) != len(lines):
        raise ValueError(f"{vocab_path}: duplicate tokens in the vocabulary")
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{vocab_path}: special tokens {missing} are missing")
    return BertTokenizer(vocab=vocab, do_lower_case=True)


def missing_pieces(tokenizer: BertTokenizer, texts: Iterable[str]) -> list[str]:
    """The character pieces (``c`` to start a word, ``##c`` to continue one) that ``texts`` need and
    the vocabulary lacks: the words that would become [UNK]. A vocabulary trained on captions
    can lack, say, "0", which VQA answers use; adding these pieces makes every text encodable."""
    vocab, backend = tokenizer.get_vocab(), tokenizer.backend_tokenizer
    needed: dict[str, None] = {}
    for text in texts:
        words = backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))  # lower-cased, split
        for word, _ in words:
            pieces = [word[0]] + [f"##{c}" for c in word[1:]]
            needed.update((p, None) for p in pieces if p not in vocab)
    return list(needed)

