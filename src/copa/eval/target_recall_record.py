"""The keep ratios and the parameter-free reference selectors of target-patch recall: the ratios
copa.eval.target_recall measures at, and the selectors its record holds beside the run's own.
Without torch, so that the report reads the record without loading models.
"""

KEEP_RATIOS = (0.1, 0.3, 0.5, 0.7)  # Figure 1(a)'s ratios
REFERENCES = ("cls_attention", "oracle", "random")  # parameter-free: they run on any model's weights
