"""Every output path of the demo and fixture profiles comes from the run layout (copa.run_layout).

One dry run per profile (shared): each job's outputs, log and benchmark are the layout's paths for
the job's wildcards; each `copa` command a rule runs passes, for every path option, what the
subcommand would default to (the CLI's default-path functions, called on the command with those
options removed); dvc.yaml's outs and metrics are the outputs of the jobs each stage runs (or
their folders), and the demo files committed to git sit where the layout puts them.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml

from copa.cli import build_parser, data, downstream, pretraining, report
from copa.config import load_params
from copa.report.grids import available_grids, load_grid, run_name
from copa.report.tables import cost_cells
from copa.run_layout import (METRICS_FILE, RunLayout, data_beside, predictions_beside, seed_run, size_tag, split_size_tag, tag_size)
from copa.train.architectures import ARCHITECTURES
from test_workflow import DVC_STAGE_RULES, REPO, copy_workflow, snakemake

PROFILES = ("demo", "fixture")
JOB_COUNTS = {"demo": 42, "fixture": 62}  # the DAG: one paired timing per speed table (5), one job for every cost
WORKFLOW_PROFILE = {"demo": "default", "fixture": "fixture"}  # profiles/: the one that selects it


def _jobs(dry_run_output: str) -> list[dict]:
    """Each job of a `snakemake -n -p` listing: rule, outputs, inputs, log, benchmark, wildcards, command."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run_output):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if not rule:
            continue

        def field(key: str) -> str:
            found = re.search(rf"^    {key}: (.*)$", block, flags=re.MULTILINE)
            return found[1] if found else ""

        wildcards = dict(item.split("=", 1) for item in field("wildcards").split(", ") if item)
        command = re.search(r"^Shell command: (.*)$", block, flags=re.MULTILINE)
        jobs.append({"rule": rule[1], "output": [p for p in field("output").split(", ") if p],
                     "input": [p for p in field("input").split(", ") if p], "log": field("log"), "benchmark": field("benchmark"),
                     "wildcards": wildcards, "command": command[1] if command and command[1] != "None" else ""})
    return jobs


@pytest.fixture(scope="module")
def dags(tmp_path_factory) -> dict[str, list[dict]]:
    """The jobs of each profile's whole DAG, from one dry run each in a copy of the workflow."""
    found = {}
    for profile in PROFILES:
        run = snakemake(copy_workflow(tmp_path_factory.mktemp(profile)), "-n", "-p", "--cores", "2", "--workflow-profile", f"profiles/{WORKFLOW_PROFILE[profile]}")
        assert run.returncode == 0, run.stdout
        found[profile] = _jobs(run.stdout)
        assert len(found[profile]) == JOB_COUNTS[profile]
    return found


def _run(wildcards: dict[str, str]) -> str:
    """The job's pretraining run: its `run` wildcard, or the name copa.report.grids.run_name gives
    the pretrain rule's wildcards (the rules' spelling of a run must be its)."""
    if "run" in wildcards:
        return wildcards["run"]
    arch = next(a.name for a in ARCHITECTURES.values() if a.run_prefix == wildcards["stream"])
    location = [int(k) for k in wildcards["location"].split("-")]
    name = run_name(wildcards["method"], location, float(wildcards["keep"]), int(wildcards["seed"]), arch)
    assert name == f"{wildcards['stream']}{wildcards['method']}-loc{wildcards['location']}-keep{wildcards['keep']}-seed{wildcards['seed']}"
    return name


def _cost_cells(layout: RunLayout) -> dict[Path, list[str]]:
    """Every cost the profile's tables read, and its default run's: the efficiency job's outputs."""
    params = load_params(layout.profile)
    return cost_cells([load_grid(name) for name in available_grids()], params, layout.results, params.report.seeds)


def _files(stem: Path, *suffixes: str) -> list[Path]:
    return [Path(f"{stem}{suffix}") for suffix in suffixes]


TABLE = (".csv", ".md", ".tex", ".json")
FIGURE = (".png", ".pdf")


def _expected(job: dict, layout: RunLayout, data_root: str) -> tuple[list[Path], str]:
    """(the layout's outputs of the job, the job's name for its log and benchmark)."""
    rule, w = job["rule"], job["wildcards"]
    run = _run(w) if {"run", "method"} & set(w) else None
    task, size, grid = w.get("task"), w.get("size", ""), w.get("grid")

    def anchor(model: str) -> tuple[list[Path], str]:
        result = layout.anchor_result(model, seed_run(w.get("seed")))
        return [layout.anchor_run(model, seed_run(w.get("seed"))) / METRICS_FILE, result, predictions_beside(result)], f"{model}/seed{w.get('seed')}"

    by_rule = {
        "synth": lambda: ([Path(data_root)], "synth"),
        "validate_data": lambda: ([layout.data_validation], "validate_data"),
        "filter_annotations": lambda: ([layout.filtered_annotations, layout.filter_report, layout.filter_table], "filter_annotations"),
        "patch_labels": lambda: ([layout.patch_label_store, layout.patch_label_summary, *_files(layout.patch_label_figure, *FIGURE)], "patch_labels"),
        "encoder_init": lambda: ([layout.encoder_init(w.get("seed")) / METRICS_FILE], f"encoder_init/seed{w.get('seed')}"),
        "pretrain": lambda: ([layout.pretrain_run(run) / METRICS_FILE], f"pretrain/{run}"),
        "pretrain_eval": lambda: ([layout.pretrain_eval(run), *_files(layout.pretrain_figure(run), *FIGURE)], f"pretrain_eval/{run}"),
        "finetune": lambda: ([layout.finetune_run(run, task, size) / METRICS_FILE], f"finetune/{run}/{task}{size}"),
        "evaluate": lambda: ([layout.finetune_result(run, task, size), layout.finetune_predictions(run, task, size)], f"evaluate/{run}/{task}{size}"),
        "vqa_scratch": lambda: anchor("vqa_scratch"),
        "perception_oracle": lambda: anchor("perception_oracle"),
        "efficiency": lambda: (list(_cost_cells(layout)), "efficiency/costs"),
        "efficiency_paired": lambda: ([layout.efficiency_paired(grid)], f"efficiency/paired/{grid}"),
        "reference_boxes": lambda: ([layout.reference_boxes, layout.reference_boxes_summary], "reference_boxes"),
        "patch_detection": lambda: ([layout.patch_detection(run)], f"patch_detection/{run}"),
        "figure5": lambda: ([*_files(layout.table("figure5"), *TABLE), *_files(layout.figure("figure5"), *FIGURE)], "figure/figure5"),
        "table": lambda: (_files(layout.table(grid), *TABLE), f"table/{grid}"),
        "figure": lambda: ([*_files(layout.table(grid), *TABLE), *_files(layout.figure(grid), *FIGURE)], f"figure/{grid}"),
        "figure4": lambda: ([*_files(layout.figure("figure4"), *FIGURE), data_beside(layout.figure("figure4"))], "figure/figure4"),
        "claims": lambda: ([layout.claims, layout.claims_json], "claims"),
        "instruments": lambda: ([layout.instruments, layout.instruments.with_suffix(".json")], "instruments"),
    }
    return by_rule[rule]()  # only the job's rule: the others' wildcards are not there


@pytest.mark.parametrize("profile", PROFILES)
def test_every_job_writes_the_layouts_paths(dags, profile):
    layout, data_root = RunLayout(profile), load_params(profile).data.root
    for job in dags[profile]:
        if job["rule"] == "all":
            assert not job["output"]
            continue
        outputs, name = _expected(job, layout, data_root)
        where = f"{profile} job {job['rule']} {job['wildcards']}"
        assert sorted(map(Path, job["output"])) == sorted(outputs), where
        assert Path(job["log"]) == layout.log(name), where
        assert Path(job["benchmark"]) == layout.benchmark(name), where


def _command(job: dict) -> argparse.Namespace:
    """The `copa` command of a job's shell command, parsed as the CLI parses it."""
    words = shlex.split(job["command"])
    return build_parser().parse_args(words[1:words.index(">")])


def _without(args: argparse.Namespace, *options: str) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **{option: None for option in options}})


def _paths(*values) -> tuple:
    return tuple(None if v is None else Path(v) for v in values)


# rule -> (the CLI's default-path function, the options whose defaults it resolves)
DEFAULTS = {
    "filter_annotations": (data.filter_outputs, ("out", "report")),
    "patch_labels": (data.patch_label_paths, ("annotations", "out", "summary", "figure")),
    "reference_boxes": (data.reference_box_outputs, ("out", "summary")),
    "pretrain_eval": (pretraining.pretrain_eval_outputs, ("json", "figure")),
    "evaluate": (downstream.evaluate_outputs, ("json", "predictions")),
    "vqa_scratch": (downstream.vqa_scratch_outputs, ("json", "predictions")),
    "claims": (report.claims_paths, ("tables", "out")),
    "instruments": (lambda args, layout: (report.instruments_output(args, layout),), ("out",)),
}


@pytest.mark.parametrize("profile", PROFILES)
def test_the_rules_pass_what_the_cli_defaults_to(dags, profile):
    """Every path option of every job's `copa` command is the subcommand's default for that run."""
    layout = RunLayout(profile)
    checked = set()
    for job in dags[profile]:
        rule = job["rule"]
        if not job["command"]:
            continue
        args = _command(job)
        assert args.profile == profile
        where = f"{profile} job {rule} {job['wildcards']}: {job['command']}"
        if rule in DEFAULTS:
            resolve, options = DEFAULTS[rule]
            resolved = resolve(_without(args, *options), layout)
            assert tuple(resolved) == _paths(*(getattr(args, o) for o in options)), where
        elif rule == "pretrain":
            assert Path(args.annotations) == layout.filtered_annotations, where
        elif rule == "patch_detection":
            assert pretraining.patch_detection_output(_without(args, "json"), layout) == Path(args.json), where
        elif rule == "efficiency":
            # one job for every cost: the CLI writes each where copa.report.tables.cost_cells puts it, as the job's outputs (above)
            assert args.grid_costs and args.json is None, where
        elif rule == "efficiency_paired":
            assert pretraining.efficiency_output(_without(args, "json"), layout, args.grid) == Path(args.json), where
        elif rule in ("table", "figure", "figure5"):
            defaults = _without(args, "results", "out", "figure")
            results = report.results_layout(defaults, profile)
            assert results.results == Path(args.results), where
            if rule == "figure5":
                in_domain, out_of_domain, stem, figure = report.figure5_paths(defaults, results)
                assert [str(in_domain), str(out_of_domain)] == job["input"][:2], where
            else:
                stem, figure = report.table_outputs(defaults, results, args.grid)
            assert (stem, figure) == _paths(args.out, getattr(args, "figure", None)), where
        elif rule == "figure4":
            assert Path(args.figure) == layout.figure("figure4"), where  # required: no default
        checked.add(rule)
    assert set(DEFAULTS) | {"pretrain", "patch_detection", "efficiency", "efficiency_paired", "table", "figure", "figure5", "figure4"} <= checked


def test_evaluate_defaults_to_the_size_tagged_result_of_a_size_tagged_run():
    """A fine-tuning run at another resolution (COPA Table 5: <run>/vqa-192px) has its result
    where the workflow writes it, vqa-192px.json, not over the profile's vqa.json."""
    layout = RunLayout("demo")
    for size in ("", "-192px"):
        args = build_parser().parse_args(["evaluate", "--task", "vqa", "--run", str(layout.finetune_run("tpd-loc3-keep0.5-seed0", "vqa", size))])
        assert downstream.evaluate_outputs(args, layout) == (layout.finetune_result("tpd-loc3-keep0.5-seed0", "vqa", size),
                                                             layout.finetune_predictions("tpd-loc3-keep0.5-seed0", "vqa", size))
    other = build_parser().parse_args(["evaluate", "--task", "captioning", "--run", "runs/demo/finetune/r/captioning_cider"])
    assert downstream.evaluate_outputs(other, layout)[0] == Path("results/demo/finetune/r/captioning.json")  # no size tag: the task's


def _dvc_stages() -> dict[str, list[dict]]:
    """dvc.yaml's stages, a `foreach` expanded: stage -> [(its command, outs, deps) per item]."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    expanded = {}
    for name, stage in stages.items():
        items = stage.get("foreach", [None])
        body = stage.get("do", stage)
        expanded[name] = [yaml.safe_load(yaml.safe_dump(body).replace("${item}", item)) if item else body for item in items]
    return expanded


def _paths_of(entries: list) -> set[Path]:
    return {Path(next(iter(e)) if isinstance(e, dict) else e) for e in entries}


def _covers(folder_or_file: Path, path: Path) -> bool:
    return path == folder_or_file or folder_or_file in path.parents


def test_dvc_outs_are_the_outputs_of_the_jobs_each_stage_runs(dags):
    """Each stage's outs, metrics and plots (demo) are the outputs of the jobs of its rules, or
    folders of them, and cover every such output; its snakemake target is one of them (or a rule);
    every data dep is an output or a folder of outputs of the DAG."""
    jobs = dags["demo"]
    every_output = {Path(p) for job in jobs for p in job["output"]}
    problems = []
    for name, bodies in _dvc_stages().items():
        produced = {Path(p) for job in jobs if job["rule"] in DVC_STAGE_RULES[name] for p in job["output"]}
        outs = set()
        for body in bodies:
            outs |= _paths_of(body.get("outs", []) + body.get("metrics", []) + body.get("plots", []))
            target = shlex.split(body["cmd"])[1]
            if target not in DVC_STAGE_RULES[name] and target != "runs" and Path(target) not in produced:
                problems.append(f"stage {name}: target {target} is no output of its rules {DVC_STAGE_RULES[name]}")
            for dep in _paths_of(body.get("deps", [])):
                if dep.parts[0] not in ("src", "workflow", "params", "Snakefile") and not any(_covers(dep, p) for p in every_output):
                    problems.append(f"stage {name}: dep {dep} is no output of the DAG nor a folder of outputs")
        stray = sorted(str(o) for o in outs if not any(_covers(o, p) for p in produced))
        missing = sorted(str(p) for p in produced if not any(_covers(o, p) for o in outs))
        if stray or missing:
            problems.append(f"stage {name}: outs that are not its jobs' outputs {stray}; its jobs' outputs not in its outs {missing}")
    assert not problems, "dvc.yaml:\n" + "\n".join(problems)


def test_committed_demo_files_are_where_the_layout_puts_them(dags):
    """The demo results and figures in git are outputs of the demo DAG (nothing moved on disk), the
    outcome targets `copa targets` writes after it, or costs of one of its runs at a resolution its
    grids no longer ask for (left from an earlier scaling of COPA Table 5), at the layout's place for them."""
    import subprocess

    committed = subprocess.run(["git", "ls-files", "results/demo", "figures/demo"], cwd=REPO, stdout=subprocess.PIPE, text=True,
                               check=True).stdout.split()
    outputs = {p for job in dags["demo"] for p in job["output"]}
    runs = {split_size_tag(Path(p).stem)[0] for job in dags["demo"] if job["rule"] == "efficiency" for p in job["output"]}
    layout = RunLayout("demo")
    outputs |= {str(layout.targets), str(layout.targets.with_suffix(".json"))}
    for path in sorted(set(committed) - outputs):
        run, tag = split_size_tag(Path(path).stem)
        assert run in runs and tag and layout.efficiency(run, tag) == Path(path), f"{path}: not where the run layout puts an output"
    assert len(set(committed) & outputs) > 50


def test_names_in_wildcards_give_the_rules_patterns():
    layout = RunLayout("demo")
    assert layout.finetune_result("{run}", "{task}", "{size}") == Path("results/demo/finetune/{run}/{task}{size}.json")
    assert layout.finetune_predictions("{run}", "{task}", "{size}") == Path("results/demo/finetune/{run}/{task}{size}_predictions.json")
    assert layout.efficiency("{run}", "{size}") == Path("results/demo/efficiency/{run}{size}.json")
    assert layout.encoder_init("{seed}") == Path("runs/demo/encoder_init/seed{seed}")
    assert RunLayout("demo", Path("elsewhere")).table("table9") == Path("elsewhere/tables/table9")
    assert RunLayout("demo", Path("elsewhere")).figure("table9") == Path("figures/demo/table9")  # --results moves results only


@pytest.mark.parametrize("px", [None, 112, 384])
def test_size_tags_round_trip(px):
    tag = size_tag(px)
    assert tag_size(tag) == px
    assert split_size_tag(f"vqa{tag}") == ("vqa", tag)
    assert predictions_beside(Path(f"r/vqa{tag}.json")) == Path(f"r/vqa{tag}_predictions.json")
