"""Image-text retrieval (COPA §4.2, Appendix E): fine-tuning with ITC + ITM, two-stage inference.

- Fine-tuning (:class:`RetrievalFinetuning`): ITC on text-free image features (selection by
  image-[CLS] attention, the features the coarse stage ranks with) against the text [CLS]
  features, in-batch (the captions of one image are not each other's negatives); ITM on the
  positives and one hard negative per image and per text, each pair's image encoded with the TPD
  guided by that pair's text (the features the re-ranking stage uses). Loss = ITC + ITM.
- Inference (:func:`evaluate_retrieval`): coarse similarities of all images and texts, then the
  top ``k`` candidates of every query re-scored by ITM's positive probability with text-guided
  image features (:func:`copa.eval.retrieval.two_stage_scores`); TR / IR R@1/5/10 and their mean.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from copa.config import Params, RetrievalEvalParams
from copa.data.heldout import RetrievalSet, karpathy_retrieval_set, karpathy_training_pairs
from copa.data.layout import DataLayout
from copa.data.pretrain_data import PairDataset
from copa.eval.retrieval import chance_recalls, encode_retrieval_set, fit_oracle_recalls, query_hits, retrieval_recall, two_stage_scores
from copa.models.copa import CopaModel
from copa.models.objectives.itc import contrastive_loss
from copa.models.objectives.itm import itm_loss, itm_pairs, sample_hard_negatives
from copa.tasks.base import FinetuneTask, run_finetuning
from copa.train.finetune import FinetunedRun, start_from


class RetrievalFinetuning(nn.Module):
    def __init__(self, model: CopaModel):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """``batch``: images, input_ids, attention_mask, image_ids (B,) and seed (the negatives' draw)."""
        m = self.model
        images, ids, mask, image_ids = batch["images"], batch["input_ids"], batch["attention_mask"], batch["image_ids"]
        generator = torch.Generator(device="cpu").manual_seed(int(batch["seed"]))
        text = m.encode_text(ids, mask)  # (B, L, H)
        image_free = m.encode_image(images, None, use_detector=False)["tokens"]
        temperature = m.temperature()
        image_feat, text_feat = m.image_feature(image_free), m.text_feature(text)
        itc = contrastive_loss(image_feat, text_feat, temperature, ids=image_ids)
        with torch.no_grad():
            sim = image_feat @ text_feat.t() / temperature
        neg_text, neg_image = sample_hard_negatives(sim.cpu(), sim.t().cpu(), generator, ids=image_ids.cpu())
        image_idx, text_idx, labels = (t.to(images.device) for t in itm_pairs(neg_text, neg_image))
        itm_image = m.encode_image(images[image_idx], text[text_idx, 0], use_detector=True)["tokens"]
        _, fused = m.fuse(itm_image, text[text_idx], mask[text_idx])
        itm = itm_loss(m.itm_logits(fused), labels)
        return {"loss": itc + itm, "itc": itc.detach(), "itm": itm.detach(), "temperature": temperature.detach(),
                "itm_examples": torch.tensor(float(len(labels)))}


class RetrievalTask(FinetuneTask):
    name = "retrieval"

    def __init__(self, params: Params, pretrain_run: Path, data_root: Path, out_dir: Path):
        model, self.params, self.tokenizer = start_from(pretrain_run, params, out_dir, self.name)
        self.pairs, self.image_ids = karpathy_training_pairs(DataLayout(Path(data_root)), self.settings.dataset)
        size, length = self.params.patch_labels.image_size, self.params.model.max_text_length
        self.data = PairDataset(self.pairs, self.tokenizer, size, length, self.params.seed)
        self.model = RetrievalFinetuning(model)

    @property
    def n_examples(self) -> int:
        return len(self.pairs)

    def collate(self, indices, epoch: int) -> dict:
        self.data.set_epoch(epoch)
        batch = self.data.collate_fn([self.data[i] for i in indices])
        return {"images": batch["image"], "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "image_ids": torch.tensor([self.image_ids[i] for i in indices])}


def run_retrieval_finetuning(params: Params, pretrain_run: Path, data_root: Path, out_dir: Path, resume: bool = True) -> dict:
    return run_finetuning(RetrievalTask(params, pretrain_run, data_root, out_dir), out_dir, resume)


# ------------------------------------------------------------------------------------ inference
@torch.no_grad()
def evaluate_retrieval(model: CopaModel, tokenizer, data: RetrievalSet, k: int, image_size: int, max_length: int,
                       batch_size: int = 64, progress: bool = True) -> tuple[dict, dict]:
    """Two-stage R@K of COPA Appendix E, the coarse stage's own R@K, and random ranking's (the
    trivial baseline); and the top 10 of every query's two-stage ranking."""
    images, image_feats, states, masks, text_feats = encode_retrieval_set(model, tokenizer, data, image_size, max_length, batch_size, progress)
    coarse = image_feats @ text_feats.t()
    pairs = min(k, len(states)) * len(images) + min(k, len(images)) * len(states)
    bar = tqdm(desc="ITM re-ranking", total=pairs, disable=not progress)

    def itm_scores(image_idx: Tensor, text_idx: Tensor) -> Tensor:
        out = []
        for i in range(0, len(image_idx), batch_size):
            im, tx = image_idx[i:i + batch_size], text_idx[i:i + batch_size]
            tokens = model.encode_image(images[im], states[tx, 0], use_detector=True)["tokens"]
            _, fused = model.fuse(tokens, states[tx], masks[tx])
            out.append(model.itm_logits(fused).softmax(dim=-1)[:, 1])
            bar.update(len(im))
        return torch.cat(out)

    i2t, t2i = two_stage_scores(coarse, k, itm_scores)
    bar.close()
    hits = query_hits(i2t, data.text_image, sim_t2i=t2i)
    result = {"images": len(images), "texts": len(states), "k_test": k,
              **retrieval_recall(i2t, data.text_image, sim_t2i=t2i),
              "coarse": retrieval_recall(coarse, data.text_image),
              "chance": chance_recalls(len(images), len(states)),
              # where the world says which captions are true of which images: what knowing that alone reaches
              **({"fit_oracle": fit_oracle_recalls(data.true_of, data.text_image, len(images))} if data.true_of else {}),
              # last: each query's hit (0 / 1) at each K by its index in the set (TR: images, IR: texts), for paired
              # comparisons of runs (copa.eval.paired)
              "per_query": {key: {str(i): int(h) for i, h in enumerate(hit.tolist())} for key, hit in hits.items()}}
    top = min(10, len(images), len(states))
    rankings = {"image_to_texts": i2t.topk(top, dim=1).indices.tolist(), "text_to_images": t2i.topk(top, dim=1).indices.tolist()}
    return result, rankings


def evaluate_retrieval_task(run: FinetunedRun, settings: RetrievalEvalParams, data_root: Path, split: str,
                            batch_size: int = 64, progress: bool = True) -> tuple[dict, dict, str]:
    """(metrics record, the top-10 rankings with the images and texts they index, a one-line summary)."""
    model, params, tokenizer = run.model, run.params, run.tokenizer
    dataset = params.finetune.retrieval.dataset
    data = karpathy_retrieval_set(DataLayout(Path(data_root)), dataset, split)
    result, rankings = evaluate_retrieval(model, tokenizer, data, settings.k_test, params.patch_labels.image_size,
                                          params.model.max_text_length, batch_size, progress)
    summary = (f"retrieval TR@1 {result['tr_r1']:.1f} IR@1 {result['ir_r1']:.1f} mean R {result['r_mean']:.1f} "
               f"(coarse stage alone: mean R {result['coarse']['r_mean']:.1f}; random ranking: TR@1 {result['chance']['tr_r1']:.1f})")
    predictions = {"images": [str(p) for p in data.images], "texts": list(data.texts), **rankings}
    return {"split": f"{dataset} Karpathy {split}", **result}, predictions, summary
