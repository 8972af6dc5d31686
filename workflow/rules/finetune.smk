# Downstream fine-tuning of a pretraining run, one run per (pretraining run, task), and its
# evaluation on the task's test split. Later rules (the tables) ask for results by path, e.g.
#   results/demo/finetune/tpd-loc3-keep0.5-seed0/retrieval.json
# As for pretraining, only metrics.json is declared, so an interrupted fine-tune resumes.


wildcard_constraints:
    task="retrieval",


rule finetune:
    input:
        pretrained=f"runs/{PROFILE}/pretrain/{{run}}/metrics.json",
        root=rules.synth.output.root if SYNTHETIC else PARAMS.data.root,
        code=source_files("tasks/*.py", "train/*.py", "models/*.py", "data/pretrain_data.py", "data/heldout.py", "data/tokenizer.py"),
    output:
        f"runs/{PROFILE}/finetune/{{run}}/{{task}}/metrics.json",
    params:
        finetune=section_json("finetune"),  # rerun trigger: the fine-tuning settings
        copa=copa_cli("finetune"),
        pretrained=lambda w, input: os.path.dirname(input.pretrained),
        run_dir=lambda w, output: os.path.dirname(output[0]),
    log:
        f"logs/{PROFILE}/finetune/{{run}}/{{task}}.log",
    threads: 2
    resources:
        mem_mb=4000 if PROFILE != "paper" else 64000,
        runtime=60 if PROFILE != "paper" else 24 * 60,
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.copa} finetune --task {wildcards.task} --pretrained {params.pretrained} --root {input.root}"
        " --out {params.run_dir} > {log} 2>&1"


rule evaluate:
    input:
        metrics=f"runs/{PROFILE}/finetune/{{run}}/{{task}}/metrics.json",
        root=rules.synth.output.root if SYNTHETIC else PARAMS.data.root,
        code=source_files("tasks/*.py", "eval/retrieval.py", "data/heldout.py"),
    output:
        f"results/{PROFILE}/finetune/{{run}}/{{task}}.json",
    params:
        evaluate=section_json("evaluate"),  # rerun trigger: the inference settings
        copa=copa_cli("evaluate"),
        run_dir=lambda w, input: os.path.dirname(input.metrics),
    log:
        f"logs/{PROFILE}/evaluate/{{run}}/{{task}}.log",
    threads: 2
    resources:
        mem_mb=4000 if PROFILE != "paper" else 32000,
        runtime=30 if PROFILE != "paper" else 6 * 60,
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.copa} evaluate --task {wildcards.task} --run {params.run_dir} --root {input.root} --json {output} --quiet > {log} 2>&1"
