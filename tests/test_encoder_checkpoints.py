"""Pretraining from real encoder weights (``pretrain.encoder_init.method: checkpoints``, COPA §4.1):
a timm ViT state dict into the vision encoder, a BERT one into the text encoder + fusion, a given
vocabulary instead of a trained one; and CLIP's ViT layout (pre-norm, QuickGELU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import QuickGELU
from timm.models.vision_transformer import VisionTransformer
from transformers import BertConfig, BertForMaskedLM, BertModel

from copa.config import load_params
from copa.data.filtering import run_filter
from copa.data.tokenizer import SPECIAL_TOKENS, load_tokenizer
from copa.models.copa import CopaModel
from copa.models.selectors import build_selector
from copa.models.vit import VisionEncoder, load_timm_state_dict
from copa.train.build import copa_spec
from copa.train.encoder_init import initialise_encoders
from copa.train.pretrain import PretrainTask

PARAMS_DIR = Path(__file__).parents[1] / "params"


def test_clip_layout_matches_timm() -> None:
    """Pre-norm + QuickGELU (OpenAI CLIP's ViT in timm) give timm's output for the same weights."""
    torch.manual_seed(0)
    reference = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=0,
                                  pre_norm=True, act_layer=QuickGELU).eval()
    model = VisionEncoder(build_selector("none", 32), 1, img_size=32, embed_dim=32, depth=2, num_heads=2,
                          pre_norm=True, activation="quick_gelu").eval()
    load_timm_state_dict(model, reference.state_dict())  # every parameter present, none extra
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(x)["tokens"], reference.forward_features(x), atol=1e-6)
    with pytest.raises(ValueError, match="activation 'relu'"):
        VisionEncoder(build_selector("none", 32), 1, img_size=32, embed_dim=32, depth=2, num_heads=2, activation="relu")


def _fixture_params(**init: str):
    sets = ["pretrain.encoder_init.method=checkpoints"] + [f"pretrain.encoder_init.{k}={v}" for k, v in init.items()]
    return load_params("fixture", sets, params_dir=PARAMS_DIR)


def _weights(tmp_path: Path, params, vocab_size: int) -> tuple[Path, Path, VisionTransformer, BertModel]:
    m = params.model
    torch.manual_seed(3)
    vit = VisionTransformer(img_size=params.patch_labels.image_size, patch_size=params.patch_labels.patch_size, embed_dim=m.vision_dim,
                            depth=m.vision_depth, num_heads=m.vision_heads, num_classes=0)
    masked_lm = BertForMaskedLM(BertConfig(vocab_size=vocab_size, hidden_size=m.text_dim, num_hidden_layers=m.text_layers + m.fusion_layers,
                                           num_attention_heads=m.text_heads, intermediate_size=m.text_intermediate,
                                           max_position_embeddings=m.max_text_length))
    save_file(vit.state_dict(), tmp_path / "vit.safetensors")
    torch.save(masked_lm.state_dict(), tmp_path / "bert.bin")  # the published layout: bert.* and cls.predictions.*
    return tmp_path / "vit.safetensors", tmp_path / "bert.bin", vit, masked_lm


def test_encoder_init_loads_vit_and_bert_checkpoints(tmp_path) -> None:
    probe = _fixture_params()
    vision, text, vit, masked_lm = _weights(tmp_path, probe, vocab_size=50)
    bert = masked_lm.bert
    params = _fixture_params(vision_checkpoint=str(vision), text_checkpoint=str(text))
    torch.manual_seed(0)
    model = CopaModel(copa_spec(params, 50))
    loaded = initialise_encoders(model, pair_data=None, params=params, init_dir=tmp_path / "run")
    assert loaded["vision_checkpoint"] == str(vision) and loaded["fusion_parameters_not_in_bert"] > 0
    assert loaded["decoder_parameters_not_in_bert"] > 0  # its cross-attention
    assert torch.equal(model.vision.blocks[1].mlp.fc2.weight, vit.blocks[1].mlp.fc2.weight)
    assert torch.equal(model.vision.pos_embed, vit.pos_embed)
    assert torch.equal(model.text.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    last = params.model.text_layers + params.model.fusion_layers - 1  # BERT's last layer -> the last fusion layer
    bert_last = bert.encoder.layer[last].output.dense.weight
    assert any(torch.equal(p, bert_last) for p in model.fusion.layers[-1].parameters())


def test_the_decoder_starts_from_bert_as_mplug_does(tmp_path) -> None:
    """Before: the decoder stayed at its random initialisation whatever the checkpoints."""
    probe = _fixture_params()
    _, text, _, masked_lm = _weights(tmp_path, probe, vocab_size=50)
    bert, decoders = masked_lm.bert, {}
    for flag in ("true", "false"):
        params = _fixture_params(text_checkpoint=str(text), decoder_from_text_checkpoint=flag)
        torch.manual_seed(0)
        model = CopaModel(copa_spec(params, 50))
        initialise_encoders(model, None, params, tmp_path / flag)
        decoders[flag] = model.decoder
    loaded = decoders["true"]
    n = len(loaded.layer)
    assert n < len(bert.encoder.layer)  # the first n layers, as from_pretrained fills a smaller config
    for i in range(n):
        assert torch.equal(loaded.layer[i].attention.self.query.weight, bert.encoder.layer[i].attention.self.query.weight)
        assert torch.equal(loaded.layer[i].output.dense.weight, bert.encoder.layer[i].output.dense.weight)
        assert not torch.equal(loaded.layer[i].crossattention.self.query.weight, bert.encoder.layer[i].attention.self.query.weight)
    assert torch.equal(loaded.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    assert torch.equal(loaded.head.decoder.weight, bert.embeddings.word_embeddings.weight)  # tied
    assert torch.equal(loaded.head.transform.dense.weight, masked_lm.cls.predictions.transform.dense.weight)
    assert torch.equal(loaded.head.decoder.bias, masked_lm.cls.predictions.bias)
    assert not torch.equal(decoders["false"].layer[0].attention.self.query.weight, bert.encoder.layer[0].attention.self.query.weight)


def test_encoder_init_errors_name_the_setting(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.safetensors: no such weights file"):
        params = _fixture_params(vision_checkpoint=str(tmp_path / "missing.safetensors"))
        initialise_encoders(CopaModel(copa_spec(params, 50)), None, params, tmp_path / "run")
    with pytest.raises(ValueError, match="neither vision_checkpoint nor text_checkpoint"):
        params = _fixture_params()
        initialise_encoders(CopaModel(copa_spec(params, 50)), None, params, tmp_path / "run")
    with pytest.raises(ValueError, match="vision_checkpoint is set but method is 'contrastive'"):
        params = load_params("fixture", ["pretrain.encoder_init.vision_checkpoint=x.safetensors"], params_dir=PARAMS_DIR)
        initialise_encoders(CopaModel(copa_spec(params, 50)), None, params, tmp_path / "run")


def test_pretraining_uses_a_given_vocabulary(fixture_world, tmp_path) -> None:
    vocab = tmp_path / "bert-vocab.txt"
    vocab.write_text("\n".join([*SPECIAL_TOKENS, "this", "is", "a", "circle", ".", "##s"]) + "\n", encoding="utf-8")
    params = load_params("fixture", [f"model.vocab_file={vocab}"], params_dir=PARAMS_DIR)
    run_filter(fixture_world, params.filter, tmp_path / "annotations", progress=False)
    task = PretrainTask(params, fixture_world, tmp_path / "annotations", tmp_path / "run")
    assert (tmp_path / "run" / "vocab" / "vocab.txt").read_bytes() == vocab.read_bytes()  # kept with the run
    assert len(task.tokenizer) == len(load_tokenizer(vocab)) == 11
    assert task.model.model.text.embeddings.word_embeddings.num_embeddings == 11
    with pytest.raises(FileNotFoundError, match="nowhere.txt: no such file \\(params model.vocab_file\\)"):
        PretrainTask(load_params("fixture", [f"model.vocab_file={tmp_path / 'nowhere.txt'}"], params_dir=PARAMS_DIR),
                     fixture_world, tmp_path / "annotations", tmp_path / "run2")
