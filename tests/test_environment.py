"""The pinned environment imports cleanly in one process (ENVIRONMENT.md lists the traps:
a CPU torch beside PyPI torchvision breaks torchvision's ops and transformers' BertModel)."""

import subprocess
import sys

from conftest import HANG_GUARD_S


def test_torch_torchvision_timm_transformers_in_one_process():
    code = (
        "import torch, torchvision, timm, transformers\n"
        "from torchvision.ops import nms\n"
        "from transformers import BertConfig, BertModel\n"
        "keep = nms(torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]]), torch.tensor([0.9, 0.8, 0.7]), 0.5)\n"
        "assert keep.tolist() == [0, 2], keep\n"
        "BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))\n"
        "timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=0)\n"
        "print(torch.__version__, torchvision.__version__, timm.__version__, transformers.__version__)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert run.returncode == 0, run.stderr
    torch_v, vision_v, timm_v, transformers_v = run.stdout.split()
    assert torch_v.startswith("2.14.1") and vision_v.startswith("0.29.1")
    assert (timm_v, transformers_v) == ("1.0.31", "5.23.0")


def test_evaluation_tools_import():
    import pycocoevalcap.cider.cider  # noqa: F401
    import pycocotools.coco  # noqa: F401
