# COPA Figure 5 (Appendix C.1): does the TPD, trained on COCO / VG boxes, find what web captions
# name? Reference boxes on a sample of web pairs, the TPD of every per-epoch checkpoint of the
# default run against them, then the figure beside the held-out probes of pretrain_eval.


rule reference_boxes:
    # Grounding DINO with each caption as the prompt (reference_boxes.model: a local directory, or
    # a hub name when reachable), or in the synthetic profiles the world's oracle boxes
    # (reference_boxes.detector: oracle), in one JSON-lines format.
    input:
        root=rules.synth.output.root if SYNTHETIC else PARAMS.data.root,
        model=[PARAMS.reference_boxes.model] if os.path.isdir(PARAMS.reference_boxes.model) else [],  # a local copy
        code=sources("copa.data.reference_boxes", "copa.train.distributed"),
    output:
        boxes=LAYOUT.reference_boxes,
        summary=LAYOUT.reference_boxes_summary,
    params:
        gpu=GPU_SHELL,  # CUDA_VISIBLE_DEVICES (paper profile)
        reference=section_json("reference_boxes"),  # rerun trigger: detector, sample, thresholds
        copa=copa_cli("reference_boxes"),
    log:
        LAYOUT.log("reference_boxes"),
    benchmark:
        LAYOUT.benchmark("reference_boxes"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.gpu}{params.copa} reference-boxes --root {input.root:q} --out {output.boxes:q} --summary {output.summary:q} --quiet > {log:q} 2>&1"


rule patch_detection:
    # The TPD of each per-epoch checkpoint of a pretraining run against the reference patch labels.
    input:
        metrics=LAYOUT.pretrain_run("{run}") / METRICS_FILE,
        reference=rules.reference_boxes.output.boxes,
        root=rules.synth.output.root if SYNTHETIC else PARAMS.data.root,
        code=run_sources("copa.eval.patch_detection", "copa.data.formats.reference_boxes", "copa.train.distributed", "copa.train.pretrain"),
    output:
        LAYOUT.patch_detection("{run}"),
    params:
        gpu=GPU_SHELL,  # CUDA_VISIBLE_DEVICES (paper profile)
        copa=copa_cli(),
        run_dir=lambda w, input: os.path.dirname(input.metrics),
    log:
        LAYOUT.log("patch_detection/{run}"),
    benchmark:
        LAYOUT.benchmark("patch_detection/{run}"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.gpu}{params.copa} patch-detection --run {params.run_dir:q} --reference {input.reference:q} --root {input.root:q}"
        " --json {output:q} --quiet > {log:q} 2>&1"


rule figure5:
    input:
        in_domain=LAYOUT.pretrain_eval(DEFAULT_RUN),
        out_of_domain=LAYOUT.patch_detection(DEFAULT_RUN),
        code=sources("copa.report.figure5"),
    output:
        csv=report(f"{LAYOUT.table('figure5')}.csv", caption="../report/figure5.rst", category="Tables"),
        data=multiext(str(LAYOUT.table("figure5")), ".md", ".tex", ".json"),
        png=report(f"{LAYOUT.figure('figure5')}.png", caption="../report/figure5.rst", category="Figures"),
        pdf=f"{LAYOUT.figure('figure5')}.pdf",
    params:
        copa=copa_cli(),
        run=DEFAULT_RUN,
        results=lambda w, output: os.path.dirname(os.path.dirname(output.csv)),  # results/<profile>
        stem=lambda w, output: os.path.splitext(output.csv)[0],
        figure=lambda w, output: os.path.splitext(output.png)[0],
    log:
        LAYOUT.log("figure/figure5"),
    benchmark:
        LAYOUT.benchmark("figure/figure5"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.copa} figure5 --run {params.run:q} --results {params.results:q} --out {params.stem:q} --figure {params.figure:q} > {log:q} 2>&1"
