# Tables and figures of the paper, one job per grid of params/grids/ (which runs, which columns,
# the paper's numbers); each asks for the results it reads, so Snakemake schedules the
# pretraining, fine-tuning and efficiency jobs behind them, once per run whichever grids share it.

from copa.report.grid_figures import FIGURES

TABLES = sorted(name for name in GRIDS if name not in FIGURES)

# `copa table` and `copa figure` are one subcommand function (copa.cli.report's cmd_table), with one closure.
GRID_CODE = sources("copa.report.grids", "copa.report.tables", "copa.report.grid_figures", "copa.report.figures")


localrules:
    runs,


rule runs:
    # Every run result the tables and figures read, every trained dual-stream run's probes, and the
    # default run's fine-tunes on every task: the target of DVC's `runs` stage.
    input:
        GRID_RESULTS,
        [LAYOUT.pretrain_eval(run) for run in INSTRUMENTED_RUNS],
        [LAYOUT.finetune_result(DEFAULT_RUN, task) for task in TASKS],
        LAYOUT.efficiency(DEFAULT_RUN),


rule table:
    wildcard_constraints:
        grid="|".join(TABLES),
    input:
        results=lambda w: grid_results(w.grid),
        code=GRID_CODE,
    output:
        csv=report(f"{LAYOUT.table('{grid}')}.csv", caption="../report/table.rst", category="Tables"),
        other=multiext(str(LAYOUT.table("{grid}")), ".md", ".tex", ".json"),
    params:
        grid=grid_json,  # rerun trigger: the grid file
        report=section_json("report"),
        copa=copa_cli("report", "model", "seed", "finetune.grounding"),  # the caption names the grounding fine-tune's departures
        stem=lambda w, output: os.path.splitext(output.csv)[0],
        results=lambda w, output: os.path.dirname(os.path.dirname(output.csv)),  # results/<profile>
    log:
        LAYOUT.log("table/{grid}"),
    benchmark:
        LAYOUT.benchmark("table/{grid}"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.copa} table {wildcards.grid:q} --results {params.results:q} --out {params.stem:q} > {log:q} 2>&1"


rule figure:
    wildcard_constraints:
        grid="|".join(FIGURES),
    input:
        results=lambda w: grid_results(w.grid),
        code=GRID_CODE,
    output:
        csv=report(f"{LAYOUT.table('{grid}')}.csv", caption="../report/table.rst", category="Tables"),
        data=multiext(str(LAYOUT.table("{grid}")), ".md", ".tex", ".json"),
        png=report(f"{LAYOUT.figure('{grid}')}.png", caption="../report/figure.rst", category="Figures"),
        pdf=f"{LAYOUT.figure('{grid}')}.pdf",
    params:
        grid=grid_json,
        report=section_json("report"),
        copa=copa_cli("report", "model", "seed"),
        stem=lambda w, output: os.path.splitext(output.csv)[0],
        figure=lambda w, output: os.path.splitext(output.png)[0],
        results=lambda w, output: os.path.dirname(os.path.dirname(output.csv)),  # results/<profile>
    log:
        LAYOUT.log("figure/{grid}"),
    benchmark:
        LAYOUT.benchmark("figure/{grid}"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.copa} figure {wildcards.grid:q} --results {params.results:q} --out {params.stem:q} --figure {params.figure:q} > {log:q} 2>&1"


rule figure4:
    # COPA Figure 4: the kept patches of the default run's VQA model (a TPD run) for a few test questions
    input:
        metrics=LAYOUT.finetune_run(DEFAULT_RUN, "vqa") / METRICS_FILE,
        root=rules.synth.output.root if SYNTHETIC else PARAMS.data.root,
        code=sources("copa.report.detected_patches", "copa.report.figures", "copa.data.downstream", "copa.data.layout", "copa.data.formats.referents",
                     "copa.train.finetune"),
    output:
        png=report(f"{LAYOUT.figure('figure4')}.png", caption="../report/figure4.rst", category="Figures"),
        pdf=f"{LAYOUT.figure('figure4')}.pdf",
        data=data_beside(LAYOUT.figure("figure4")),  # the paired panel: kept-set IoU of one image under two questions
    params:
        copa=copa_cli("evaluate.vqa"),  # the split and the decoding of the answers shown
        run_dir=lambda w, input: os.path.dirname(input.metrics),
        figure=lambda w, output: os.path.splitext(output.png)[0],
    log:
        LAYOUT.log("figure/figure4"),
    benchmark:
        LAYOUT.benchmark("figure/figure4"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.copa} detected-patches --run {params.run_dir:q} --root {input.root:q} --figure {params.figure:q} > {log:q} 2>&1"


rule instruments:
    # Every trained dual-stream run's held-out probes and VQA swapped-image control, side by side.
    input:
        probes=[LAYOUT.pretrain_eval(run) for run in INSTRUMENTED_RUNS],
        vqa=[str(LAYOUT.finetune_result(run, "vqa")) for run in INSTRUMENTED_RUNS
             if run == DEFAULT_RUN or str(LAYOUT.finetune_result(run, "vqa")) in GRID_RESULTS],  # where the run is fine-tuned on VQA
        code=sources("copa.report.instruments"),
    output:
        markdown=report(str(LAYOUT.instruments), caption="../report/instruments.rst", category="Instruments"),
        json=LAYOUT.instruments.with_suffix(".json"),
    params:
        runs=json.dumps(INSTRUMENTED_RUNS, sort_keys=True),  # rerun trigger: the runs and the grid rows they serve
        copa=copa_cli("report", "model", "seed", "architecture"),
    log:
        LAYOUT.log("instruments"),
    benchmark:
        LAYOUT.benchmark("instruments"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.copa} instruments --out {output.markdown:q} > {log:q} 2>&1"


rule claims:
    input:
        tables=[f"{LAYOUT.table(grid)}.csv" for grid in sorted(GRIDS)],
        figure5=[f"{LAYOUT.table('figure5')}.csv"] if PARAMS.model.selection.method == "tpd" else [],  # rule figure5
        timings=[LAYOUT.efficiency_paired(grid) for grid in PAIRED_GRIDS],  # the speedup claims pair their rounds
        code=sources("copa.report.claims"),  # and the runs' per-question scores, behind the tables
    output:
        markdown=report(str(LAYOUT.claims), caption="../report/claims.rst", category="Claims"),
        json=LAYOUT.claims_json,
    params:
        copa=copa_cli(),
        tables=lambda w, input: os.path.dirname(input.tables[0]),
    log:
        LAYOUT.log("claims"),
    benchmark:
        LAYOUT.benchmark("claims"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.copa} claims --tables {params.tables:q} --out {output.markdown:q} > {log:q} 2>&1"
