"""The single-stream extension (COPA §4.7, Table 6): COPA-S and its baseline ViLT.

One transformer over the concatenated text tokens and image patches (``model``), its pretraining
step and run (``pretraining``) and its VQA classifier (``vqa``), driven by the same engine, CLI and
rules as the dual-stream runs (``architecture: single_stream`` in params; run names ``single-...``).
"""
