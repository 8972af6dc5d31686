# Run control, the resolved parameters and helpers shared by every rule file.
import dataclasses
import functools
import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from copa.config import SELECTION_METHODS, VQA_SCRATCH_READS, ParamsError, load_params, overrides_of
from copa.run_layout import METRICS_FILE, SIZE_TAG_PATTERN, RunLayout, data_beside, predictions_beside, seed_run, tag_size
from copa.report.grids import available_grids, instrumented_runs, load_grid, params_run_name
from copa.train.architectures import ARCHITECTURES, architecture, architecture_of_run, code_modules

# `config` holds run control only (profile, overrides); experiment parameters live in params/.
validate(config, "../schemas/config.schema.yaml")

# Resolved once, at parse time: a bad params file or override (an unregistered architecture
# included) stops the run before any job, with a message naming the file and the key.
try:
    PARAMS = load_params(config.get("profile"), config["set"])
    architecture(PARAMS)
    GRIDS = {name: load_grid(name) for name in available_grids()}  # params/grids/: the tables and figures
    PAIRED_GRIDS = sorted(name for name, grid in GRIDS.items() if "paired" in grid.sources)  # their models timed together
except ParamsError as exc:  # a user error: one line and exit 2, as `copa` gives (no Snakemake traceback)
    print(f"bad parameters: {exc}", file=sys.stderr)
    sys.exit(2)

# Imported after the check, so that a bad value is refused before pandas loads (the tables').
from copa.report.tables import cost_cells, grid_inputs
from copa.sources import module_sources
from copa.tasks.registry import TASKS, head_modules
from copa.train.encoder_init_params import encoder_init_params, reads_boxes
PROFILE = PARAMS.profile  # without --config profile=..., the one named in params/base.yaml
LAYOUT = RunLayout(PROFILE)  # every path the jobs write or read, as the CLI's defaults (copa.run_layout)
# A pretraining run's name (copa.report.grids.run_name) in wildcards: its architecture's prefix first.
RUN_PATTERN = "{stream}{method}-loc{location}-keep{keep}-seed{seed}"
SYNTHETIC = PARAMS.data.source == "synthetic"
# Threads, memory and time limits come from the workflow profile of each scale (profiles/; default for
# the CPU machines, fixture, paper), not from the rules. GPUs (paper profile; the CPU profiles
# declare none): each training / evaluation job takes one. Snakemake counts them (`--resources
# gpu=N`; the SLURM executor requests one per job) but assigns no ids, so the job exports
# CUDA_VISIBLE_DEVICES itself: the scheduler's allocation when it set one (SLURM does), otherwise
# GPU 0, with `resources: gpu: 1` (profiles/paper) so that local jobs never share it.
GPU_JOB = PROFILE == "paper"
if GPU_JOB != any("gpu" in r for r in workflow.resource_settings.overwrite_resources.values()):
    # one line and exit 2, as for a bad parameter: a paper run without GPUs (or a CPU run holding
    # them) would get the other scale's memory and time limits too
    wanted = "--workflow-profile profiles/paper" if GPU_JOB else "a CPU workflow profile (profiles/default, profiles/fixture)"
    print(f"profile {PROFILE}: its jobs' resources come from {wanted}, which this run does not use", file=sys.stderr)
    sys.exit(2)
GPU_SHELL = 'export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"; ' if GPU_JOB else ""  # rules pass it as params.gpu
# Which ready job starts first where cores are short (Snakemake's `priority`; the rest keep its
# default, 0): the chain every later job waits on (filtering, the encoder init, Algorithm 1), so that
# no job that could run beside it later holds a core it needs; then the fine-tunes, the longest of
# the jobs that run side by side after it (profiles/default gives them one thread each).
PRIORITY_CHAIN = 3  # above two fine-tunes together (the ILP sums priorities): a chain job takes two cores
PRIORITY_FINETUNE = 1

# Jobs run the `copa` installed beside the Python that runs Snakemake (and imported copa above),
# whether or not its environment is activated.
os.environ.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def copa_cli(*sections):
    """`copa --profile P` plus the run's `--set` overrides of `sections` only (top-level or dotted,
    e.g. "finetune.vqa").

    Rules get this as a param, and params are a rerun trigger: an override of another section
    (say a training knob) must not rerun the rule.
    """
    args = ["copa", "--profile", PROFILE]
    for override in overrides_of(config["set"], sections):
        args += ["--set", override]
    return shlex.join(args)


def size_override(wildcards, section):
    """`--set <section>.image_size=N` for a result tagged -Npx (COPA Table 5's resolutions), else ""."""
    size = tag_size(wildcards.size)
    return f" --set {section}.image_size={size}" if size else ""


def values_json(keys):
    """The params at dotted `keys` (sections or values, e.g. "finetune.vqa.train_splits") as canonical JSON:
    a rule param, so editing one of them reruns the job; a function, as section_json explains."""
    text = json.dumps({key: functools.reduce(dict.__getitem__, key.split("."), PARAMS.to_dict()) for key in keys}, sort_keys=True)
    return lambda wildcards: text


def section_json(name):
    """A params section as canonical JSON: a rule param, so editing the section reruns the rule.
    A function, not a string: Snakemake would read braces in values (the filter's text template,
    "This is a {label}.") as wildcards."""
    text = json.dumps(PARAMS.to_dict()[name], sort_keys=True)
    return lambda wildcards: text


# The architectures (copa.train.architectures): a run's is the one its name's prefix says
# (single-<method>-loc...: COPA Table 6's COPA-S, ViLT), trained by the same rules. What a job of
# an architecture with a params section of its own reads beyond the others is added to its rerun
# triggers only, so that the other jobs' triggers do not change.
RUN_PREFIX = "|".join(re.escape(a.run_prefix) for a in sorted(ARCHITECTURES.values(), key=lambda a: -len(a.run_prefix)))
SELECTION_METHOD = "|".join(SELECTION_METHODS)


def run_architecture(wildcards):
    """The architecture of a job's run (wildcard `stream`: its name's prefix, or the run name)."""
    return architecture_of_run(wildcards.get("stream") or wildcards.get("run", ""))


def with_architecture_section(value):
    """A rule's param function: `value(wildcards)`, then the JSON of the params section of the run's
    architecture where it has one (single_stream): a rerun trigger of its jobs only."""
    def resolve(wildcards):
        section = run_architecture(wildcards).params_section
        return value(wildcards) + (f" {section_json(section)(wildcards)}" if section else "")
    return resolve


def with_architecture_cli(value):
    """A rule's `copa` param: `value` (a function of the wildcards, or a constant), then for a run of
    another architecture than the profile's `--set architecture=<name>`, and the overrides of its
    architecture's params section."""
    def resolve(wildcards):
        arch = run_architecture(wildcards)
        text = value(wildcards) if callable(value) else value
        if arch.name != PARAMS.architecture:
            text += f" --set architecture={arch.name}"
        if arch.params_section:
            text += copa_cli(arch.params_section).removeprefix(copa_cli())
        return text
    return resolve


# The copa sources of a rule: its inputs, since Snakemake's code trigger sees a rule's command, not
# what the modules it calls import. A rule names its entries, the modules that its `copa`
# subcommand (cmd_<x> in the package src/copa/cli/) calls into to do the work, and its inputs are every file
# they run (copa.sources: their imports, transitively, lazy ones and the task registry's
# "module:function" references included). The CLI itself is no rule's input: it parses arguments and
# dispatches, what it passes on is the rule's command line and params (triggers themselves), and as
# it imports every stage, listing it would rerun every job, trainings included, for an edit of any
# subcommand. So a stage's computation belongs in its entry modules, not in copa.cli. The registries'
# "module:function" strings name every architecture's code and every head's: a job follows those
# of its run's architecture only (run_sources), so that editing one architecture's code does not
# rerun another's jobs.
REGISTRIES = ("copa.train.architectures", "copa.tasks.registry")


def sources(*entries):
    try:
        return module_sources(entries, "src", REGISTRIES)
    except ValueError as exc:  # a moved module must not silently drop its rerun trigger
        raise WorkflowError(f"copa sources of a rule: {exc} (run from the repository root)") from None


def run_sources(*entries, heads=False):
    """The code input of the jobs that each run one run's architecture (its rule's): the sources of `entries` and
    of the modules the architecture's entry names (with `heads`, also its downstream heads')."""
    by_name = {a.name: sources(*entries, *code_modules(a), *(head_modules(a.name) if heads else ())) for a in ARCHITECTURES.values()}
    return lambda wildcards: by_name[run_architecture(wildcards).name]


def grid_architectures(grid):
    """The architectures of grid `grid`'s rows (copa.train.architectures), by name."""
    return [architecture(name) for name in sorted({row.architecture for row in GRIDS[grid].rows})]


def paired_sections(grid):
    """The params sections a grid's paired timing builds its models from: the protocol, the model,
    and the own sections of its rows' architectures (a single-stream knob reruns Table 6's only)."""
    return ("efficiency", "model", "patch_labels", *(a.params_section for a in grid_architectures(grid) if a.params_section))


def paired_sources(wildcards):
    """The code a grid's paired timing runs: the measurement, and the modules of its rows' architectures."""
    return sources("copa.eval.efficiency", "copa.report.grids", "copa.train.distributed",
                   *(m for arch in grid_architectures(wildcards.grid) for m in code_modules(arch)))


def pretrained_files():
    """The weights and vocabulary files the params name (paper: CLIP ViT, BERT, its vocab.txt): inputs
    of pretraining, so that a missing one stops the DAG before it starts, naming the file."""
    init = PARAMS.pretrain.encoder_init
    named = [PARAMS.model.vocab_file]
    if init.method == "checkpoints":
        named += [init.vision_checkpoint, init.text_checkpoint]
    return [path for path in named if path]


def seed_default_run(seed):
    """The run of the profile's own parameters with seed `seed` (the perception bracket starts from it)."""
    return params_run_name(dataclasses.replace(PARAMS, seed=int(seed)))


# the run of the profile's own parameters (COPA's default: TPD after the middle layer keeping 50%)
DEFAULT_RUN = seed_default_run(PARAMS.seed)
# the pretraining runs the grids train whose held-out probes `copa pretrain-eval` reads (the report's instruments)
INSTRUMENTED_RUNS = instrumented_runs(GRIDS.values(), PARAMS)  # run -> the grid rows it serves


def default_run_sources(*entries, heads=False):
    """`run_sources` for the jobs of a rule that run the default run of their `seed` wildcard."""
    by_run = run_sources(*entries, heads=heads)
    return lambda wildcards: by_run({"run": seed_default_run(wildcards.seed)})


def finetune_start(wildcards):
    """The metrics.json of the run a fine-tune starts from: the pretraining run, or the task it continues."""
    earlier = TASKS[wildcards.task].starts_from
    if earlier:
        return LAYOUT.finetune_run(wildcards.run, earlier) / METRICS_FILE
    return LAYOUT.pretrain_run(wildcards.run) / METRICS_FILE


def task_section_json(section, key=lambda task: task):
    """params.<section>.<task's key> as canonical JSON: a rerun trigger of that task's jobs only."""
    values = PARAMS.to_dict()[section]
    return lambda wildcards: json.dumps(values[key(wildcards.task)], sort_keys=True)


def grid_results(name):
    """The result files the table or figure of grid `name` reads: its trained rows' fine-tuning
    results and every row's efficiency, for each seed of params `report.seeds`."""
    return [str(p) for p in grid_inputs(GRIDS[name], PARAMS, LAYOUT.results, PARAMS.report.seeds)]


# every result file the tables and figures read
GRID_RESULTS = sorted({path for name in GRIDS for path in grid_results(name)})


def grid_json(wildcards):
    """The job's grid as canonical JSON: a rule param, so editing the grid file reruns its table."""
    return json.dumps(dataclasses.asdict(GRIDS[wildcards.grid]), sort_keys=True)


def encoder_init_boxes(wildcards):
    """The filtered annotations, when the contrastive encoder init contrasts their boxes too."""
    return [rules.filter_annotations.output.annotations] if reads_boxes(PARAMS) else []


def encoder_init_input(wildcards):
    """The shared contrastive encoder init a pretraining run starts from (none for other methods)."""
    if PARAMS.pretrain.encoder_init.method != "contrastive":
        return []
    return [LAYOUT.encoder_init(wildcards.seed) / METRICS_FILE]
