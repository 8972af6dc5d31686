# Entry of the COPA reproduction DAG: include the rule files, name the final targets.
#   snakemake --cores all                                  demo profile (params/base.yaml)
#   snakemake --cores 2 --workflow-profile profiles/fixture   tiny CI run (profile fixture)
#   snakemake --cores 2 --config 'set=["synth.seed=3"]'    override parameters (see params/)
# Every job writes a Snakemake benchmark (wall time, memory, CPU) under logs/<profile>/benchmarks/,
# beside its log; `copa stage-times logs/<profile>/benchmarks` sums them per rule.
# Workflow profiles (profiles/; threads, memory, time limits and GPUs per rule): default (used by
# itself), fixture and paper (--workflow-profile profiles/paper); SLURM: --profile profiles/slurm.


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/efficiency.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/figure5.smk"


rule all:
    default_target: True
    input:
        rules.validate_data.output,
        rules.filter_annotations.output.report,
        rules.patch_labels.output.summary,
        rules.runs.input,
        [f"{LAYOUT.table(grid)}.csv" for grid in TABLES],
        [f"{LAYOUT.figure(grid)}.png" for grid in FIGURES],
        rules.figure4.output.png if PARAMS.model.selection.method == "tpd" else [],  # the TPD's detections
        rules.figure5.output.png if PARAMS.model.selection.method == "tpd" else [],  # ... and their generalisation
        rules.claims.output.markdown,
        rules.instruments.output.markdown,
