"""FiLM (Perez et al. 2018): a CNN over the image whose feature maps the question modulates channel by
channel; the supervised-from-scratch VQA anchor (issue 23, ``copa.tasks.vqa_scratch``).

Layout, written from the paper's description (its CLEVR model, smaller):

- **Stem**: four 3x3 convolutions, each with BatchNorm and ReLU, ``channels`` wide. The first
  log2(image_size / grid) of them stride 2, the others 1, so the feature map is ``grid`` x ``grid``
  (image_size / grid must be 1, 2, 4, 8 or 16: :func:`stem_strides`).
- **Question**: word embeddings and a one-layer GRU; the question's vector q is the GRU's hidden
  state after its last real token (the mask's; the padding comes after the tokens).
- **FiLM blocks** (the paper's residual block), ``blocks`` of them: h = ReLU(conv1x1(x)); y =
  conv3x3(h), BatchNorm without affine parameters, FiLM gamma(q) * y + beta(q) per channel, ReLU;
  the block's output is h + y. Each block has its own Linear q -> (gamma, beta); gamma is 1 + that
  Linear's output, so a block starts near the unmodulated one.
- **Coordinates**: as in the paper, two maps of each cell's x and y position in [-1, 1] are
  concatenated to the input of each block and of the classifier (what "left of" needs after the pooling).
- **Classifier**: a 1x1 convolution to 2 x channels (BatchNorm, ReLU), a global max-pool over the
  grid, then an MLP (Linear to 4 x channels, ReLU, Linear to the ``answers`` logits).

A pure module: tensors in, logits out; deterministic on CPU (no op without a deterministic kernel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

STEM_LAYERS = 4


def stem_strides(image_size: int, grid: int) -> tuple[int, ...]:
    """The stem's strides that take ``image_size`` px to a ``grid`` x ``grid`` map: stride 2 first,
    as many as image_size / grid halvings, then stride 1."""
    ratio = image_size // grid if grid > 0 and image_size % grid == 0 else 0
    halvings = int(math.log2(ratio)) if ratio > 0 and ratio & (ratio - 1) == 0 else -1
    if not 0 <= halvings <= STEM_LAYERS:
        raise ValueError(f"image size {image_size} px cannot become a {grid} x {grid} map in {STEM_LAYERS} convolutions of "
                         f"stride 1 or 2: image_size / grid must be one of {', '.join(str(2 ** k) for k in range(STEM_LAYERS + 1))}")
    return (2,) * halvings + (1,) * (STEM_LAYERS - halvings)


@dataclass(frozen=True)
class FiLMSpec:
    vocab_size: int  # question tokens
    answers: int  # classifier outputs
    image_size: int = 128
    grid: int = 16
    channels: int = 64
    word_dim: int = 128
    gru_dim: int = 128
    blocks: int = 2
    pad_id: int = 0

    def __post_init__(self) -> None:
        stem_strides(self.image_size, self.grid)  # refuses a size the stem cannot reach


def coordinates(x: Tensor) -> Tensor:
    """``x`` (B, C, H, W) with two more channels: each cell's x and y position in [-1, 1]."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([x, xs, ys], dim=1)


def conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class FiLMBlock(nn.Module):
    """The paper's residual block; its own FiLM generator q -> (gamma, beta)."""

    def __init__(self, channels: int, question_dim: int):
        super().__init__()
        self.channels = channels
        self.reduce = nn.Sequential(nn.Conv2d(channels + 2, channels, 1), nn.ReLU(inplace=True))
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)  # the BatchNorm's mean removes a bias
        self.norm = nn.BatchNorm2d(channels, affine=False)  # FiLM is the affine part
        self.film = nn.Linear(question_dim, 2 * channels)

    def forward(self, x: Tensor, q: Tensor) -> Tensor:
        """``x`` (B, C, G, G), ``q`` (B, D) -> (B, C, G, G)."""
        h = self.reduce(coordinates(x))
        d_gamma, beta = self.film(q).view(-1, 2, self.channels, 1, 1).unbind(1)  # (B, C, 1, 1) each
        y = torch.relu((1.0 + d_gamma) * self.norm(self.conv(h)) + beta)
        return h + y


class FiLMVQA(nn.Module):
    """Answer logits for questions about images (see the module docstring)."""

    def __init__(self, spec: FiLMSpec):
        super().__init__()
        self.spec = spec
        c = spec.channels
        widths = (3,) + (c,) * STEM_LAYERS
        self.stem = nn.Sequential(*(conv_bn_relu(widths[i], widths[i + 1], 3, stride)
                                    for i, stride in enumerate(stem_strides(spec.image_size, spec.grid))))
        self.embed = nn.Embedding(spec.vocab_size, spec.word_dim, padding_idx=spec.pad_id)
        self.gru = nn.GRU(spec.word_dim, spec.gru_dim, batch_first=True)
        self.blocks = nn.ModuleList(FiLMBlock(c, spec.gru_dim) for _ in range(spec.blocks))
        self.head_conv = conv_bn_relu(c + 2, 2 * c, 1)
        self.head = nn.Sequential(nn.Linear(2 * c, 4 * c), nn.ReLU(inplace=True), nn.Linear(4 * c, spec.answers))

    def image_features(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) normalised images -> (B, C, G, G)."""
        return self.stem(images)

    def question_vector(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(Q, L) token ids and mask (1 on the tokens, padding after them) -> (Q, gru_dim): the GRU's
        state after each question's last token."""
        states, _ = self.gru(self.embed(input_ids))  # (Q, L, D); a state depends on the tokens up to it only
        last = (attention_mask.sum(dim=1) - 1).clamp(min=0)  # (Q,)
        return states[torch.arange(states.shape[0], device=states.device), last]

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor, image_index: Tensor | None = None) -> Tensor:
        """(Q, answers) logits. ``images`` (B, 3, S, S); ``input_ids`` / ``attention_mask`` (Q, L);
        ``image_index`` (Q,): the image each question asks about (None: question i asks about image i),
        so an image asked several questions goes through the stem once."""
        features = self.image_features(images)
        if image_index is not None:
            features = features[image_index]  # (Q, C, G, G)
        q = self.question_vector(input_ids, attention_mask)
        for block in self.blocks:
            features = block(features, q)
        pooled = self.head_conv(coordinates(features)).amax(dim=(2, 3))  # (Q, 2C): global max-pool
        return self.head(pooled)
