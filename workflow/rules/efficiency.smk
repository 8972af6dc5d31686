# Cost of a model, one result per run name: FLOPs in COPA's Table 4 protocol (224 px, 40 text
# tokens) and the memory of one pretraining step (Figure 3); settings in
# params section `efficiency`, conventions in src/copa/eval/efficiency.py. None of it depends on
# the weights, so the model is built from the parameters (vocabulary: model.vocab_size) and no
# pretraining is needed: every cell of a grid gets its cost, trained or not. The memory is measured
# under each ITM encoding (pretrain.itm_guidance), the run's as the headline. The tables read
# results by path, e.g.
#   results/demo/efficiency/tpd-loc3-keep0.5-seed0.json
# or, at another resolution than the protocol's (COPA Table 5's rows, the paper's px in every
# profile), ...-seed0-384px.json; a run's name starts with its architecture's prefix (COPA Table 6's
# single-stream models: single-<method>-loc...json). Another model's cost: `copa efficiency
# --from-params` (or --run) by hand.
# Speed (throughput, latency) is measured per table instead (rule efficiency_paired): a table's
# models timed together, interleaved, each paired with the table's baseline round by round, so that
# what the machine does meanwhile slows them alike (copa.eval.paired_timing).

# What the memory's pretraining step computes beside the model (rerun triggers, passed on): the ITM
# encoding of the headline (the record has each), the image ITC contrasts, the ITC queue. Not the
# training knobs: a learning rate does not change the step.
MEMORY_STEP_OPTIONS = ("itm_guidance", "itc_image", "queue_size")
# The efficiency section's timing settings: the paired timing's alone (rule efficiency_paired), not a run's costs.
TIMING_KEYS = ("throughput", "latency", "timing")
COST_SETTINGS = {k: v for k, v in PARAMS.to_dict()["efficiency"].items() if k not in TIMING_KEYS}  # the rest: what a run's costs read
# Every cost the tables read, and the default run's (copa.report.tables.cost_cells), in one job: once
# torch and transformers are loaded (about 4 s a process) a model's costs take about a second, and
# the grids hold some twenty cells. Its rerun triggers are the union of the cells' (a single-stream
# knob reruns them all: a minute at most).
COST_CELLS = cost_cells(GRIDS.values(), PARAMS, LAYOUT.results, PARAMS.report.seeds)
ARCHITECTURE_SECTIONS = sorted({a.params_section for a in ARCHITECTURES.values() if a.params_section})


rule efficiency:
    input:
        code=sources("copa.eval.efficiency", "copa.data.tokenizer", "copa.report.grids", "copa.report.tables", "copa.train.distributed",
                     "copa.train.pretrain", "copa.tasks.registry", "copa.tasks.generation",
                     *(m for a in ARCHITECTURES.values() for m in code_modules(a))),
    output:
        [str(path) for path in COST_CELLS],
    params:
        gpu=GPU_SHELL,  # CUDA_VISIBLE_DEVICES (paper profile)
        # rerun triggers (functions, as section_json's: braces in a string would read as wildcards): which models,
        cells=lambda w: json.dumps({str(path): sets for path, sets in COST_CELLS.items()}, sort_keys=True),
        efficiency=lambda w: json.dumps(COST_SETTINGS, sort_keys=True),  # the protocol (not its timing), the models' sections
        sections=lambda w: json.dumps({s: PARAMS.to_dict()[s] for s in ("model", *ARCHITECTURE_SECTIONS)}, sort_keys=True),
        pretrain=lambda w: json.dumps({k: PARAMS.to_dict()["pretrain"][k] for k in MEMORY_STEP_OPTIONS}, sort_keys=True),
        decoding=lambda w: json.dumps(PARAMS.to_dict()["evaluate"]["vqa"], sort_keys=True),  # the decoder column: one VQA answer
        copa=copa_cli(*(f"efficiency.{k}" for k in COST_SETTINGS), "model", "patch_labels", *(f"pretrain.{k}" for k in MEMORY_STEP_OPTIONS),
                      "evaluate.vqa", "report.seeds", "seed", "architecture", *ARCHITECTURE_SECTIONS),
    log:
        LAYOUT.log("efficiency/costs"),
    benchmark:
        LAYOUT.benchmark("efficiency/costs"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.gpu}{params.copa} efficiency --grid-costs > {log:q} 2>&1"


rule efficiency_paired:
    # The throughput and latency of a table's models (its grid's rows, each at its resolution),
    # timed in one job by the paired protocol, with their speedups over the table's baseline row.
    wildcard_constraints:
        grid="|".join(PAIRED_GRIDS),
    input:
        code=paired_sources,
    output:
        LAYOUT.efficiency_paired("{grid}"),
    params:
        gpu=GPU_SHELL,  # CUDA_VISIBLE_DEVICES (paper profile)
        grid=grid_json,  # rerun triggers: the grid's rows, and the sections the models are built from
        sections=lambda w: json.dumps({s: PARAMS.to_dict()[s] for s in paired_sections(w.grid)}, sort_keys=True),
        copa=lambda w: copa_cli(*paired_sections(w.grid)),
    log:
        LAYOUT.log("efficiency/paired/{grid}"),
    benchmark:
        LAYOUT.benchmark("efficiency/paired/{grid}"),
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.gpu}{params.copa} efficiency --grid {wildcards.grid:q} --json {output:q} > {log:q} 2>&1"
