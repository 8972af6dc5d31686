"""copa efficiency: the FLOP counter against hand counts (attention included), the selection's
saving, deterministic training memory, the batch search, and the CLI record."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from timm.layers import Attention
from transformers.models.bert.modeling_bert import BertAttention

from copa.cli import main
from copa.config import load_params
from copa.eval.efficiency import measure_efficiency
from copa.eval.flops import flop_counter_mode
from copa.eval.timing import fits_on, largest_batch
from copa.eval.training_memory import saved_for_backward, training_memory
from copa.models.text import additive_mask, bert_config

PARAMS_DIR = Path(__file__).parents[1] / "params"


def _flops(fn) -> int:
    with torch.no_grad(), flop_counter_mode() as counter:
        fn()
    return counter.get_total_flops()


def test_linear_layer_count_is_two_flops_per_multiply_accumulate():
    b, n, d_in, d_out = 3, 5, 7, 11
    layer = torch.nn.Linear(d_in, d_out)
    assert _flops(lambda: layer(torch.randn(b, n, d_in))) == 2 * b * n * d_in * d_out


def test_vit_attention_count_includes_the_fused_attention():
    b, n, d, heads = 2, 17, 32, 4
    attn = Attention(d, heads, qkv_bias=True)
    assert attn.fused_attn  # the sdpa path, as the model runs it
    macs = 4 * b * n * d * d + 2 * b * n * n * d  # qkv (3 b n d^2) + proj (b n d^2) + q k^T and attn v (b n^2 d each)
    assert _flops(lambda: attn(torch.randn(b, n, d))) == 2 * macs


def test_bert_sdpa_attention_with_a_mask_is_counted():
    b, n, d = 2, 9, 32
    attn = BertAttention(bert_config(hidden_size=d, num_layers=1, num_heads=4, intermediate_size=64)).eval()
    mask = torch.ones(b, n, dtype=torch.long)
    mask[0, -3:] = 0
    macs = 4 * b * n * d * d + 2 * b * n * n * d
    assert _flops(lambda: attn(torch.randn(b, n, d), attention_mask=additive_mask(mask, torch.float32))) == 2 * macs


SMALL = ["efficiency.image_size=64", "efficiency.text_length=16", "efficiency.memory.image_size=32",
         "efficiency.memory.batch_size=2", "efficiency.memory.object_batch_size=1"]


def _params(*overrides: str):
    return load_params("fixture", [*SMALL, *overrides], PARAMS_DIR)


def test_vision_flops_without_selection_match_the_vit_formula():
    params = _params("model.selection.method=none")
    record = measure_efficiency(params, 100, params.efficiency, parts=("flops",))
    m, p = params.model, params.patch_labels.patch_size
    n = (64 // p) ** 2
    tokens = 1 + n
    block = 4 * tokens * m.vision_dim**2 + 2 * tokens**2 * m.vision_dim + 8 * tokens * m.vision_dim**2  # attention + MLP (ratio 4)
    macs = n * 3 * p * p * m.vision_dim + m.vision_depth * block  # + the patch embedding
    assert record["flops"]["gmacs"]["vision"] * 1e9 == pytest.approx(macs)
    assert record["flops"]["gflops"]["total"] == pytest.approx(2 * record["flops"]["gmacs"]["total"])


def test_keeping_half_the_patches_costs_less_than_no_selection():
    tpd = _params("model.selection.keep_ratio=0.5")
    none = _params("model.selection.method=none")
    a = measure_efficiency(tpd, 100, tpd.efficiency, parts=("flops",))["flops"]["gmacs"]
    b = measure_efficiency(none, 100, none.efficiency, parts=("flops",))["flops"]["gmacs"]
    assert a["vision"] < b["vision"] and a["fusion"] < b["fusion"] and a["total"] < b["total"]
    assert a["text"] == b["text"]


def test_saved_bytes_count_what_the_graph_holds_for_backward():
    x = torch.randn(10, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(10))

    def step() -> torch.Tensor:
        x.sin()  # saves x, but its graph is dropped at once: not counted
        return (x.exp() * w).sum()  # exp saves its output (40 bytes); mul saves it and w (excluded)

    loss, saved = saved_for_backward(step, exclude=[w])
    assert saved == {"saved_bytes": 40, "saved_storages": 1, "saved_tensors": 3}
    loss.backward()
    assert torch.allclose(x.grad, x.exp().detach() * w.detach())


def test_training_memory_is_deterministic_and_grows_with_the_batch():
    params = _params()
    small = params.efficiency
    large = dataclasses.replace(small, memory=dataclasses.replace(small.memory, batch_size=2 * small.memory.batch_size))
    first = training_memory(params, 100, small, torch.device("cpu"))
    again = training_memory(params, 100, small, torch.device("cpu"))
    assert first == again
    assert first["saved_bytes"] > 0 and first["parameter_bytes"] > 0
    assert training_memory(params, 100, large, torch.device("cpu"))["saved_bytes"] > first["saved_bytes"]


def test_batch_search_respects_the_cap_and_the_first_out_of_memory():
    assert largest_batch(lambda b: True, 48) == (48, [1, 2, 4, 8, 16, 32, 48])
    assert largest_batch(lambda b: True, 1) == (1, [1])
    assert largest_batch(lambda b: b <= 5, 64) == (4, [1, 2, 4, 8])
    on_cpu = fits_on(torch.device("cpu"), lambda b: pytest.fail("the CPU search must not run batches"))
    assert largest_batch(on_cpu, 16) == (16, [1, 2, 4, 8, 16])

    def run(batch: int) -> None:
        if batch > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    assert largest_batch(fits_on(torch.device("cuda"), run), 64) == (4, [1, 2, 4, 8])
    with pytest.raises(RuntimeError, match="batch of one"):
        largest_batch(lambda b: False, 8)


FAST = [arg for setting in [*SMALL, "efficiency.throughput.iterations=1", "efficiency.latency.iterations=2"] for arg in ("--set", setting)]


def test_cli_writes_the_record_of_a_run(fixture_pretraining_run, tmp_path, capsys):
    out = tmp_path / "efficiency.json"
    args = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR), *FAST, "efficiency", "--run", str(fixture_pretraining_run),
            "--json", str(out), "--device", "cpu"]
    assert main(args) == 0
    record = json.loads(out.read_text())
    assert record["run"] == str(fixture_pretraining_run) and record["trained_steps"] == 3
    assert record["device"]["device"] == "cpu" and record["device"]["threads"] >= 1 and record["device"]["torch"] == torch.__version__
    assert record["settings"]["image_size"] == 64 and record["settings"]["throughput"]["max_batch"] == 4
    assert record["flops"]["image_tokens"] == 1 + (64 // 16) ** 2 and record["flops"]["gmacs"]["total"] > 0
    assert record["throughput"]["batch"] == 4 and record["throughput"]["pairs_per_s"] > 0
    assert record["latency"]["median_ms"] > 0 and record["training_memory"]["saved_bytes"] > 0
    assert "2 x GMACs" in record["conventions"]["flops"]
    assert "GMACs" in capsys.readouterr().out


def test_cli_from_params_measures_the_baseline(tmp_path):
    out = tmp_path / "none.json"
    args = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR), *FAST, "--set", "model.selection.method=none",
            "efficiency", "--from-params", "--json", str(out), "--device", "cpu"]
    assert main(args) == 0
    record = json.loads(out.read_text())
    assert record["model"]["selection"] == "none" and record["overrides"][-1] == "model.selection.method=none"


def test_the_decoder_column_counts_one_vqa_answer_of_a_decoding_model_only(tmp_path):
    """COPA's inference time includes writing the answer: the record counts the decoder's beam search
    over the full evaluate.vqa length apart, more for a longer answer; a single-stream model has none."""
    gmacs = {}
    for name, overrides in {"short": ["evaluate.vqa.max_length=2"], "long": ["evaluate.vqa.max_length=4"],
                            "single": ["architecture=single_stream"]}.items():
        out = tmp_path / f"{name}.json"
        sets = [arg for o in overrides for arg in ("--set", o)]
        assert main(["--profile", "fixture", "--params-dir", str(PARAMS_DIR), *FAST, *sets, "efficiency", "--from-params",
                     "--no-timing", "--json", str(out), "--device", "cpu"]) == 0
        gmacs[name] = json.loads(out.read_text())["flops"]["gmacs"]
    short, long = gmacs["short"], gmacs["long"]
    assert 0 < short["decoder"] < long["decoder"] and short["total"] == long["total"]  # the forward does not decode
    assert long["total_with_decoder"] == pytest.approx(long["total"] + long["decoder"])
    assert "decoder" not in gmacs["single"] and "total_with_decoder" not in gmacs["single"]
