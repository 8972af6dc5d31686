"""What a target-patch recall record holds (copa.eval.target_recall writes it, the report reads it):
the keep ratios and the parameter-free reference selectors. Without torch: the report reads records
without loading models.
"""

KEEP_RATIOS = (0.1, 0.3, 0.5, 0.7)  # Figure 1(a)'s ratios
REFERENCES = ("cls_attention", "oracle", "random")  # parameter-free: they run on any model's weights
