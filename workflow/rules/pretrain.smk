# COPA pretraining (Algorithm 1), one run per (selector, location, keeping ratio, seed). Later
# rules (the ablation grids) ask for the runs they need by path, e.g.
#   runs/demo/pretrain/tpd-loc3-keep0.5-seed0/metrics.json
# `location` is one layer or several joined by '-' (TRIPS: 5-10); a run's name starts with its
# architecture's prefix (single-...: COPA-S, ViLT; copa.train.architectures). Only metrics.json is declared:
# the checkpoints beside it are not outputs, so Snakemake does not delete them and an
# interrupted run resumes from its last checkpoint when the rule runs again.
# pretrain_eval probes every epoch's checkpoint on held-out images (results/, figures/).


wildcard_constraints:
    stream=f"({RUN_PREFIX})",  # the run's architecture (single-: COPA Table 6's COPA-S, ViLT)
    method=SELECTION_METHOD,
    location=r"\d+(-\d+)*",
    keep=r"[01](\.\d+)?",
    seed=r"\d+",
    run=rf"({RUN_PREFIX})({SELECTION_METHOD})-loc\d+(-\d+)*-keep[01](\.\d+)?-seed\d+",


rule encoder_init:
    # The contrastive stand-in for CLIP / BERT weights (pretrain.encoder_init.method contrastive):
    # selection-free, so one node per seed that every run of the grids starts from.
    input:
        root=rules.synth.output.root if SYNTHETIC else PARAMS.data.root,
        boxes=encoder_init_boxes,  # read from its default path (copa encoder-init --annotations)
        code=sources("copa.train.pretrain"),
    output:
        LAYOUT.encoder_init("{seed}") / METRICS_FILE,
    params:
        gpu=GPU_SHELL,  # CUDA_VISIBLE_DEVICES (paper profile)
        init=lambda w: json.dumps({k: v for k, v in encoder_init_params(PARAMS).items() if k != "seed"}, sort_keys=True),  # what it reads
        # the overrides of what it reads (copa.train.encoder_init_params), not Algorithm 1's
        copa=copa_cli("model", "patch_labels", *(("filter",) if reads_boxes(PARAMS) else ()),
                      *(f"pretrain.{k}" for k in ("encoder_init", "batch_size", "pair_sources", "weight_decay",
                                                  *(("object_batch_size", "pta_labels") if reads_boxes(PARAMS) else ())))),
        run_dir=lambda w, output: os.path.dirname(output[0]),
    priority: PRIORITY_CHAIN
    log:
        LAYOUT.log("encoder_init/seed{seed}"),
    benchmark:
        LAYOUT.benchmark("encoder_init/seed{seed}"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.gpu}{params.copa} --set seed={wildcards.seed:q} encoder-init --root {input.root:q} --out {params.run_dir:q} > {log:q} 2>&1"


rule pretrain:
    input:
        root=rules.synth.output.root if SYNTHETIC else PARAMS.data.root,
        annotations=rules.filter_annotations.output.annotations,
        encoder_init=encoder_init_input,
        code=run_sources("copa.train.pretrain"),
        pretrained=pretrained_files(),
    output:
        LAYOUT.pretrain_run(RUN_PATTERN) / METRICS_FILE,
    params:
        gpu=GPU_SHELL,  # CUDA_VISIBLE_DEVICES (paper profile)
        model=with_architecture_section(section_json("model")),  # rerun triggers: the model and its training
        pretrain=section_json("pretrain"),
        patch_labels=section_json("patch_labels"),  # the pretraining resolution and patch size
        copa=with_architecture_cli(copa_cli("model", "pretrain", "patch_labels")),
        location=lambda w: f"model.selection.location=[{', '.join(w.location.split('-'))}]",
        run_dir=lambda w, output: os.path.dirname(output[0]),
        encoder_init=lambda w, input: ["--encoder-init", os.path.dirname(input.encoder_init[0])] if input.encoder_init else [],
    priority: PRIORITY_CHAIN
    log:
        LAYOUT.log(f"pretrain/{RUN_PATTERN}"),
    benchmark:
        LAYOUT.benchmark(f"pretrain/{RUN_PATTERN}"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.gpu}{params.copa} --set model.selection.method={wildcards.method:q} --set {params.location:q}"
        " --set model.selection.keep_ratio={wildcards.keep:q} --set seed={wildcards.seed:q}"
        " pretrain --root {input.root:q} --annotations {input.annotations:q} --out {params.run_dir:q} {params.encoder_init:q} > {log:q} 2>&1"


rule pretrain_eval:
    # Held-out probes (ITC retrieval R@K, ITM, patch precision / recall of the selection on held-out
    # boxes, with chance levels, ...) and the run's figure: of every per-epoch checkpoint for the
    # default run, of the last one for the others (the report's instruments per run).
    input:
        metrics=LAYOUT.pretrain_run("{run}") / METRICS_FILE,
        root=rules.synth.output.root if SYNTHETIC else PARAMS.data.root,
        code=run_sources("copa.eval.pretraining", "copa.eval.target_recall", "copa.data.heldout", "copa.data.layout", "copa.report.pretrain_figure",
                         "copa.train.pretrain"),
    output:
        json=LAYOUT.pretrain_eval("{run}"),
        figure=multiext(str(LAYOUT.pretrain_figure("{run}")), ".png", ".pdf"),
    params:
        gpu=GPU_SHELL,  # CUDA_VISIBLE_DEVICES (paper profile)
        copa=copa_cli(),
        run_dir=lambda w, input: os.path.dirname(input.metrics),
        figure_stem=lambda w, output: os.path.splitext(output.figure[0])[0],
        checkpoints=lambda w: "epochs" if w.run == DEFAULT_RUN else "last",
    log:
        LAYOUT.log("pretrain_eval/{run}"),
    benchmark:
        LAYOUT.benchmark("pretrain_eval/{run}"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.gpu}{params.copa} pretrain-eval --run {params.run_dir:q} --root {input.root:q} --json {output.json:q}"
        " --figure {params.figure_stem:q} --checkpoints {params.checkpoints:q} --quiet > {log:q} 2>&1"
