# Downstream fine-tuning of a pretraining run, one run per (pretraining run, task), and its
# evaluation on the task's test split(s). Later rules (the tables) ask for results by path, e.g.
#   results/demo/finetune/tpd-loc3-keep0.5-seed0/vqa.json
# Tasks: copa.tasks.registry (captioning_cider continues the captioning run of the same
# pretraining run). As for pretraining, only metrics.json is declared, so an interrupted
# fine-tune resumes. A VQA fine-tune at another resolution than the profile's (COPA Table 5) is
# the task with a size tag, e.g. results/demo/finetune/tpd-loc3-keep0.5-seed0/vqa-192px.json. A
# run fine-tunes the tasks its architecture has a head for (copa.tasks.registry.HEADS: a
# single-stream run, single-..., COPA Table 6, VQA only).


wildcard_constraints:
    task="|".join(TASKS),
    size=SIZE_TAG_PATTERN,


rule finetune:
    input:
        pretrained=finetune_start,
        root=rules.synth.output.root if SYNTHETIC else PARAMS.data.root,
        code=run_sources("copa.tasks.registry", heads=True),  # the modules of the heads of the run's architecture
    output:
        LAYOUT.finetune_run("{run}", "{task}", "{size}") / METRICS_FILE,
    params:
        gpu=GPU_SHELL,  # CUDA_VISIBLE_DEVICES (paper profile)
        finetune=with_architecture_section(task_section_json("finetune")),  # rerun trigger: the task's fine-tuning settings
        copa=lambda w: copa_cli(f"finetune.{w.task}", "seed") + size_override(w, f"finetune.{w.task}"),  # that task's overrides, and a Table 5 resolution
        pretrained=lambda w, input: os.path.dirname(input.pretrained),
        run_dir=lambda w, output: os.path.dirname(output[0]),
    priority: PRIORITY_FINETUNE
    log:
        LAYOUT.log("finetune/{run}/{task}{size}"),
    benchmark:
        LAYOUT.benchmark("finetune/{run}/{task}{size}"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.gpu}{params.copa} finetune --task {wildcards.task:q} --pretrained {params.pretrained:q} --root {input.root:q}"
        " --out {params.run_dir:q} > {log:q} 2>&1"


rule evaluate:
    input:
        metrics=rules.finetune.output[0],
        root=rules.synth.output.root if SYNTHETIC else PARAMS.data.root,
        code=run_sources("copa.tasks.registry", "copa.train.finetune", heads=True),
    output:
        metrics=LAYOUT.finetune_result("{run}", "{task}", "{size}"),
        predictions=LAYOUT.finetune_predictions("{run}", "{task}", "{size}"),
    params:
        gpu=GPU_SHELL,  # CUDA_VISIBLE_DEVICES (paper profile)
        evaluate=task_section_json("evaluate", lambda task: TASKS[task].settings),  # rerun trigger: the inference settings
        copa=lambda w: copa_cli(f"evaluate.{TASKS[w.task].settings}"),
        run_dir=lambda w, input: os.path.dirname(input.metrics),
    log:
        LAYOUT.log("evaluate/{run}/{task}{size}"),
    benchmark:
        LAYOUT.benchmark("evaluate/{run}/{task}{size}"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.gpu}{params.copa} evaluate --task {wildcards.task:q} --run {params.run_dir:q} --root {input.root:q} --json {output.metrics:q}"
        " --predictions {output.predictions:q} --quiet > {log:q} 2>&1"


rule vqa_scratch:
    # The supervised-from-scratch VQA anchor (issue 23; params vqa_scratch, copa.tasks.vqa_scratch): a
    # FiLM model trained on the VQA training questions alone, at the VQA fine-tune's budget, scored as
    # every VQA row; the grids that name it as an anchor show it beside the pretrained rows. One job
    # trains and evaluates; as for fine-tuning, of the run folder only metrics.json is declared, so a
    # killed run resumes.
    input:
        root=rules.synth.output.root if SYNTHETIC else PARAMS.data.root,
        code=sources("copa.tasks.vqa_scratch"),
    output:
        metrics=LAYOUT.anchor_run("vqa_scratch", seed_run("{seed}")) / METRICS_FILE,  # (not the checkpoints beside it)
        json=LAYOUT.anchor_result("vqa_scratch", seed_run("{seed}")),
        predictions=predictions_beside(LAYOUT.anchor_result("vqa_scratch", seed_run("{seed}"))),
    params:
        gpu=GPU_SHELL,  # CUDA_VISIBLE_DEVICES (paper profile)
        reads=values_json(VQA_SCRATCH_READS),  # rerun trigger: what the anchor reads
        copa=copa_cli(*VQA_SCRATCH_READS),
        run_dir=lambda w, output: os.path.dirname(output.metrics),
    log:
        LAYOUT.log(f"vqa_scratch/{seed_run('{seed}')}"),
    benchmark:
        LAYOUT.benchmark(f"vqa_scratch/{seed_run('{seed}')}"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.gpu}{params.copa} --set seed={wildcards.seed:q} vqa-scratch --root {input.root:q} --out {params.run_dir:q}"
        " --json {output.json:q} --predictions {output.predictions:q} --quiet > {log:q} 2>&1"


rule perception_oracle:
    # The perception bracket (issue 23; finetune.vqa.perception oracle, copa.models.scene_tokens): the
    # profile's default run of the seed fine-tuned for VQA with the scene's perfect image tokens in
    # place of its ViT, at the VQA fine-tune's budget, and evaluated as every VQA row; the grids that
    # name it as an anchor show what the fusion and decoder make of perfect perception. One job
    # fine-tunes and evaluates; of the run folder only metrics.json is declared, so a killed run resumes.
    input:
        pretrained=lambda w: LAYOUT.pretrain_run(seed_default_run(w.seed)) / METRICS_FILE,
        root=rules.synth.output.root if SYNTHETIC else PARAMS.data.root,
        code=default_run_sources("copa.tasks.registry", "copa.train.finetune", heads=True),
    output:
        metrics=LAYOUT.anchor_run("perception_oracle", seed_run("{seed}")) / METRICS_FILE,  # (not the checkpoints beside it)
        json=LAYOUT.anchor_result("perception_oracle", seed_run("{seed}")),
        predictions=predictions_beside(LAYOUT.anchor_result("perception_oracle", seed_run("{seed}"))),
    params:
        gpu=GPU_SHELL,  # CUDA_VISIBLE_DEVICES (paper profile)
        reads=values_json(("finetune.vqa", "evaluate.vqa")),  # rerun triggers: the VQA fine-tuning and inference settings
        finetune=copa_cli("finetune.vqa"),
        evaluate=copa_cli("evaluate.vqa"),
        pretrained=lambda w, input: os.path.dirname(input.pretrained),
        run_dir=lambda w, output: os.path.dirname(output.metrics),
    log:
        LAYOUT.log(f"perception_oracle/{seed_run('{seed}')}"),
    benchmark:
        LAYOUT.benchmark(f"perception_oracle/{seed_run('{seed}')}"),
    conda:
        "../envs/copa.yaml"
    shell:  # (the bracket keeps every patch: the run's own selection, whatever an override says)
        "{params.gpu}{params.finetune} --set seed={wildcards.seed:q} --set finetune.vqa.perception=oracle --set finetune.vqa.selection=null"
        " finetune --task vqa --pretrained {params.pretrained:q} --root {input.root:q} --out {params.run_dir:q} > {log:q} 2>&1"
        " && {params.evaluate} evaluate --task vqa --run {params.run_dir:q} --root {input.root:q} --json {output.json:q}"
        " --predictions {output.predictions:q} --quiet >> {log:q} 2>&1"
