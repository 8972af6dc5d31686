"""Parameters -> the models and their pretraining steps, dual-stream (COPA, mPLUG) and single-stream
(COPA-S, ViLT): the one place that reads params for them."""

from __future__ import annotations

from copa.config import Params, ParamsError
from copa.data.scene_grid import ATTRIBUTES
from copa.models.copa import CopaModel, CopaSpec
from copa.models.pretraining import CopaPretraining
from copa.models.single_stream import SingleStreamModel, SingleStreamSpec
from copa.models.single_stream_pretraining import SingleStreamPretraining


def perception_spec(perception: str) -> dict:
    """The CopaSpec fields of ``perception``: with the oracle, what it needs of the scene grids (copa.data.scene_grid)."""
    return {"perception": perception,
            "scene_attributes": tuple(len(values) for values in ATTRIBUTES.values()) if perception == "oracle" else ()}


def require_encoder(params: Params, what: str) -> None:
    """Refuse ``what`` (which needs the ViT) for parameters whose model perceives otherwise."""
    if params.model.perception != "encoder":
        raise ParamsError(f"model.perception {params.model.perception}: {what} needs the ViT; the oracle's image tokens are "
                          "a fine-tune's bracket (finetune.vqa.perception, finetune.grounding.perception)")


def copa_spec(params: Params, vocab_size: int) -> CopaSpec:
    """The model of a profile, at the pretraining resolution and patch size of its patch labels."""
    m, selection = params.model, params.model.selection
    return CopaSpec(
        vocab_size=vocab_size,
        image_size=params.patch_labels.image_size,
        patch_size=params.patch_labels.patch_size,
        vision_dim=m.vision_dim, vision_depth=m.vision_depth, vision_heads=m.vision_heads,
        vision_pre_norm=m.vision_pre_norm, vision_activation=m.vision_activation, vision_pos_init=m.vision_pos_init,
        vision_stem=m.vision_stem,
        text_dim=m.text_dim, text_heads=m.text_heads, text_intermediate=m.text_intermediate,
        text_layers=m.text_layers, fusion_layers=m.fusion_layers, fusion_stride=m.fusion_stride,
        decoder_layers=m.decoder_layers, init_std=m.init_std, dropout=m.dropout, max_text_length=m.max_text_length, embed_dim=m.embed_dim,
        selection=selection.method,
        location=selection.location,
        keep_ratio=selection.keep_ratio,
        tpd_fusion=selection.tpd_fusion,
        **perception_spec(m.perception),
    )


def build_pretraining(params: Params, tokenizer) -> CopaPretraining:
    """Algorithm 1 for a profile; ``tokenizer`` gives the vocabulary and the special ids."""
    p = params.pretrain
    if params.model.selection.method == "oracle":  # it keeps the patches a text refers to: nothing in pretraining says which
        raise ParamsError("model.selection.method oracle: no pretraining objective passes the referent boxes it selects by; "
                          "the oracle is a reference for copa pretrain-eval's target-patch recall")
    require_encoder(params, "pretraining")
    special = [tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens]
    model = CopaModel(copa_spec(params, len(tokenizer)))
    return CopaPretraining(
        model,
        vocab_size=len(tokenizer),
        mask_id=tokenizer.mask_token_id,
        special_ids=special,
        pad_id=tokenizer.pad_token_id,
        queue_size=p.queue_size,
        momentum=p.momentum,
        distill_alpha=p.distill_alpha,
        mlm_probability=p.mlm_probability,
        loss_weights=vars(p.loss_weights),
        itc_image=p.itc_image,
        itm_guidance=p.itm_guidance,
        itm_negative_sharpness=p.itm_negative_sharpness,
        switch_rule=p.warm_up.rule,
        switch_steps=p.warm_up.steps,
        switch_pta_loss=p.warm_up.pta_loss,
    )


def single_stream_spec(params: Params, vocab_size: int) -> SingleStreamSpec:
    """The single-stream model of a profile: the ViT's sizes (``model.vision_*``) at the pretraining
    resolution, the run's selection, ``single_stream.tpd_query``."""
    m, selection = params.model, params.model.selection
    require_encoder(params, "the single-stream model")
    try:
        return SingleStreamSpec(
            vocab_size=vocab_size, image_size=params.patch_labels.image_size, patch_size=params.patch_labels.patch_size,
            dim=m.vision_dim, depth=m.vision_depth, heads=m.vision_heads, pre_norm=m.vision_pre_norm,
            activation=m.vision_activation, pos_init=m.vision_pos_init, stem=m.vision_stem, init_std=m.init_std, dropout=m.dropout,
            max_text_length=m.max_text_length,
            selection=selection.method, location=selection.location, keep_ratio=selection.keep_ratio, tpd_fusion=selection.tpd_fusion,
            tpd_query=params.single_stream.tpd_query,
        )
    except ValueError as exc:  # a selection the single-stream model does not take
        raise ParamsError(f"architecture single_stream, params model.selection: {exc}") from None


def build_single_stream_pretraining(params: Params, tokenizer) -> SingleStreamPretraining:
    """The single-stream pretraining step of a profile (``build_pretraining``'s counterpart)."""
    p = params.pretrain
    return SingleStreamPretraining(
        SingleStreamModel(single_stream_spec(params, len(tokenizer))),
        vocab_size=len(tokenizer), mask_id=tokenizer.mask_token_id,
        special_ids=[tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens],
        mlm_probability=p.mlm_probability, itm_swap_probability=params.single_stream.itm_swap_probability,
        loss_weights=vars(p.loss_weights), switch_rule=p.warm_up.rule, switch_steps=p.warm_up.steps,
        switch_pta_loss=p.warm_up.pta_loss,
    )
