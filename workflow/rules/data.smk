# Data sources: the embedded synthetic world, and the check of a data root by every reader.

if SYNTHETIC:

    rule synth:
        # The declared output is the whole data root, not the manifest inside it: Snakemake
        # removes it before a rerun, so a world regenerated with other params keeps no stale
        # files (the generator overwrites but never cleans). Later rules take the root as input
        # and reach the files inside through the CLI (copa.data.layout); declaring those files
        # as outputs too is impossible (Snakemake forbids outputs inside a directory output).
        input:
            code=source_files("data/synth/*.py", "data/formats/*.py", "data/layout.py"),
        output:
            root=directory(PARAMS.data.root),
        params:
            synth=section_json("synth"),  # rerun trigger: the world changes with any synth param
            copa=copa_cli("synth"),
        log:
            f"logs/{PROFILE}/synth.log",
        threads: 8  # processes drawing images (the files do not depend on it); capped at --cores
        resources:
            mem_mb=4000,
            runtime=60,  # minutes (the SLURM time limit); the demo world takes about one on 2 cores
        conda:
            "../envs/copa.yaml"
        shell:
            "{params.copa} synth --root {output.root} --workers {threads} --quiet > {log} 2>&1"


rule validate_data:
    # Runs every reader over the data root. The synthetic world holds every source
    # (--require-all); a real root may lack some, which are then reported as absent.
    input:
        root=rules.synth.output.root if SYNTHETIC else PARAMS.data.root,
        code=source_files("data/validate.py", "data/annotation_checks.py", "data/formats/*.py", "data/layout.py"),
    output:
        f"results/{PROFILE}/data_validation.json",
    params:
        copa=copa_cli(),
        require_all="--require-all" if SYNTHETIC else "",
    log:
        f"logs/{PROFILE}/validate_data.log",
    threads: 1
    resources:
        mem_mb=2000 if SYNTHETIC else 16000,  # the real VG / COCO JSON files take several GB in memory
        runtime=10 if SYNTHETIC else 60,
    conda:
        "../envs/copa.yaml"
    shell:
        "{params.copa} validate-data {input.root} {params.require_all} --json {output} > {log} 2>&1"
