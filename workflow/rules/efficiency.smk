# Cost of a pretraining run's model, one result per run: FLOPs, throughput and latency in COPA's
# Table 4 protocol (224 px, 40 text tokens) and the memory of one pretraining step (Figure 3);
# settings in params section `efficiency`, conventions in src/copa/eval/efficiency.py. The tables
# ask for results by path, e.g.
#   results/demo/efficiency/tpd-loc3-keep0.5-seed0.json
# Timings are only as good as the machine is quiet: other jobs running beside this one slow it.


rule efficiency:
    input:
        metrics=f"runs/{PROFILE}/pretrain/{{run}}/metrics.json",
        code=source_files("eval/efficiency.py", "models/*.py", "train/build.py"),
    output:
        f"results/{PROFILE}/efficiency/{{run}}.json",
    params:
        efficiency=section_json("efficiency"),  # rerun trigger: the measurement protocol
        copa=copa_cli("efficiency"),
        run_dir=lambda w, input: os.path.dirname(input.metrics),
    log:
        f"logs/{PROFILE}/efficiency/{{run}}.log",
    threads: 2
    resources:
        mem_mb=4000 if PROFILE != "paper" else 32000,
        runtime=30 if PROFILE != "paper" else 60,
        gpu=1 if PROFILE == "paper" else 0,
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.copa} efficiency --run {params.run_dir} --json {output} > {log} 2>&1"
