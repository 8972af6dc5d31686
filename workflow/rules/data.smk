# Data sources: the embedded synthetic world, and the check of a data root by every reader.
from copa.data.synth.ownership import ForeignFiles, refuse_foreign

if SYNTHETIC:
    # The synth rule's output is the whole root, which Snakemake deletes before a rerun: a root
    # holding anything the world's manifest does not list is refused here, before any job.
    try:
        refuse_foreign(Path(PARAMS.data.root), "the synth rule (its output is the whole data.root)")
    except ForeignFiles as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)

    rule synth:
        # The declared output is the whole data root, not the manifest inside it: Snakemake
        # removes it before a rerun, so a world regenerated with other params keeps no stale
        # files (checked above to hold only the world's own). Later rules take the root as input
        # and reach the files inside through the CLI (copa.data.layout); declaring those files
        # as outputs too is impossible (Snakemake forbids outputs inside a directory output).
        input:
            code=sources("copa.data.synth.world"),
        output:
            root=directory(PARAMS.data.root),
        params:
            synth=section_json("synth"),  # rerun trigger: the world changes with any synth param
            copa=copa_cli("synth"),
        log:
            LAYOUT.log("synth"),
        benchmark:
            LAYOUT.benchmark("synth"),
        conda:
            "../envs/copa.yaml"
        shell:
            "{params.copa} synth --root {output.root:q} --workers {threads:q} --quiet > {log:q} 2>&1"


rule validate_data:
    # Runs every reader over the data root. The synthetic world holds every source
    # (--require-all); a real root may lack some, which are then reported as absent.
    input:
        root=rules.synth.output.root if SYNTHETIC else PARAMS.data.root,
        code=sources("copa.data.validate"),
    output:
        LAYOUT.data_validation,
    params:
        copa=copa_cli(),
        require_all="--require-all" if SYNTHETIC else "",
    log:
        LAYOUT.log("validate_data"),
    benchmark:
        LAYOUT.benchmark("validate_data"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.copa} validate-data {input.root:q} {params.require_all} --json {output:q} > {log:q} 2>&1"


rule filter_annotations:
    # COPA Appendix A / X-VLM A.1 filtering: kept annotations as X-VLM JSON lines (one file per
    # source, plus dropped.tsv listing every dropped record and its reason) and the report.
    input:
        root=rules.synth.output.root if SYNTHETIC else PARAMS.data.root,
        code=sources("copa.data.filtering", "copa.report.filter_table"),
    output:
        annotations=directory(LAYOUT.filtered_annotations),
        report=LAYOUT.filter_report,
        table=LAYOUT.filter_table,  # written beside the report by the CLI
    params:
        filter=section_json("filter"),  # rerun trigger: a changed threshold reruns filtering (and what follows)
        copa=copa_cli("filter"),
    priority: PRIORITY_CHAIN
    log:
        LAYOUT.log("filter_annotations"),
    benchmark:
        LAYOUT.benchmark("filter_annotations"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.copa} filter --root {input.root:q} --out {output.annotations:q} --report {output.report:q} --workers {threads:q} --quiet > {log:q} 2>&1"


rule patch_labels:
    # Box -> patch labels at the pretraining resolution (COPA §3.3), bit-packed, with a figure of
    # a few labelled images so a person can check them.
    input:
        annotations=rules.filter_annotations.output.annotations,
        root=rules.synth.output.root if SYNTHETIC else PARAMS.data.root,  # images for the figure
        code=sources("copa.data.patch_labels", "copa.report.figures"),
    output:
        labels=LAYOUT.patch_label_store,
        summary=LAYOUT.patch_label_summary,
        figure=multiext(str(LAYOUT.patch_label_figure), ".png", ".pdf"),
    params:
        patch_labels=section_json("patch_labels"),
        seed=PARAMS.seed,  # picks the figure's examples
        copa=copa_cli("patch_labels", "seed"),
        figure_stem=lambda w, output: os.path.splitext(output.figure[0])[0],
    log:
        LAYOUT.log("patch_labels"),
    benchmark:
        LAYOUT.benchmark("patch_labels"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.copa} patch-labels --annotations {input.annotations:q} --out {output.labels:q} --summary {output.summary:q}"
        " --figure {params.figure_stem:q} --root {input.root:q} --workers {threads:q} > {log:q} 2>&1"
