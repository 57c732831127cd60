rule train_scorer:
    input:
        train=lambda wc: preprocessed(wc.dataset, subjects_of(wc.dataset, ["train"])),
        translator="results/{dataset}/models/translator.pt",
    output:
        model="results/{dataset}/models/scorer.pt",
        history=report(
            "results/{dataset}/models/scorer_history.tsv",
            caption="../report/scorer_history.rst",
            category="3. Patch scorer",
            subcategory="{dataset}",
        ),
        usage="results/{dataset}/models/scorer_usage.tsv",
    log:
        "logs/{dataset}/train_scorer.log",
    cache: "omit-software"
    conda:
        "../../envs/arepas.yaml"
    # One thread per training job: on a 2-core machine the two datasets then train side by side,
    # more throughput than one job on two threads (docs/studies.md, "Translator training step").
    # The slurm profile raises it with set-threads (GPU jobs need CPUs to feed the GPU).
    threads: 1
    resources:
        **training_resources("scorer"),
        gpu=1,
    params:
        code=script_code("train_scorer.py"),
        settings=lambda wc: DATASETS[wc.dataset]["scorer"],
        on_stall=config["scorer_stall"],
        checkpoint_dir=lambda wc: f"results/{wc.dataset}/models/scorer_checkpoint",
        seed=config["seed"],
    script:
        "../scripts/train_scorer.py"


# Method arepas_v0: its scorer, mined from its own translator's reconstructions.
use rule train_scorer as train_scorer_v0 with:
    input:
        train=lambda wc: preprocessed(wc.dataset, subjects_of(wc.dataset, ["train"])),
        translator="results/{dataset}/models/arepas_v0/translator.pt",
    output:
        model="results/{dataset}/models/arepas_v0/scorer.pt",
        history=report(
            "results/{dataset}/models/arepas_v0/scorer_history.tsv",
            caption="../report/scorer_history.rst",
            category="3. Patch scorer",
            subcategory="{dataset}: arepas_v0",
        ),
        usage="results/{dataset}/models/arepas_v0/scorer_usage.tsv",
    log:
        "logs/{dataset}/arepas_v0/train_scorer.log",
    params:
        code=script_code("train_scorer.py"),
        settings=lambda wc: V0_METHOD_SETTINGS[wc.dataset]["scorer"],
        on_stall=config["scorer_stall"],
        checkpoint_dir=lambda wc: f"results/{wc.dataset}/models/arepas_v0/scorer_checkpoint",
        seed=config["seed"],


rule train_autoencoder:
    input:
        train=lambda wc: preprocessed(wc.dataset, subjects_of(wc.dataset, ["train"])),
        val=lambda wc: preprocessed(wc.dataset, subjects_of(wc.dataset, ["val"])),
    output:
        model="results/{dataset}/models/autoencoder.pt",
        history="results/{dataset}/models/autoencoder_history.tsv",
        usage="results/{dataset}/models/autoencoder_usage.tsv",
    log:
        "logs/{dataset}/train_autoencoder.log",
    cache: "omit-software"
    conda:
        "../../envs/arepas.yaml"
    # One thread per training job: on a 2-core machine the two datasets then train side by side,
    # more throughput than one job on two threads (docs/studies.md, "Translator training step").
    # The slurm profile raises it with set-threads (GPU jobs need CPUs to feed the GPU).
    threads: 1
    resources:
        **training_resources("autoencoder"),
        gpu=1,
    params:
        code=script_code("train_autoencoder.py"),
        settings=lambda wc: DATASETS[wc.dataset]["autoencoder"],
        checkpoint_dir=lambda wc: f"results/{wc.dataset}/models/autoencoder_checkpoint",
        seed=config["seed"],
    script:
        "../scripts/train_autoencoder.py"


# Method dae: the denoising autoencoder of Kascenas et al. (MIDL 2022), on the same healthy slices.
rule train_dae:
    input:
        train=lambda wc: preprocessed(wc.dataset, subjects_of(wc.dataset, ["train"])),
        val=lambda wc: preprocessed(wc.dataset, subjects_of(wc.dataset, ["val"])),
    output:
        model="results/{dataset}/models/dae.pt",
        history="results/{dataset}/models/dae_history.tsv",
        usage="results/{dataset}/models/dae_usage.tsv",
    log:
        "logs/{dataset}/train_dae.log",
    cache: "omit-software"
    conda:
        "../../envs/arepas.yaml"
    # One thread per training job, as the other training rules (see train_scorer).
    threads: 1
    resources:
        **training_resources("dae"),
        gpu=1,
    params:
        code=script_code("train_dae.py"),
        settings=lambda wc: DATASETS[wc.dataset]["dae"],
        checkpoint_dir=lambda wc: f"results/{wc.dataset}/models/dae_checkpoint",
        seed=config["seed"],
    script:
        "../scripts/train_dae.py"


# Method arepas_calibrated: the healthy val subjects' unscaled patch scores inside the ROI.
rule patch_calibration:
    input:
        scorer=lambda wc: model_file(wc.dataset, "scorer"),
        val=lambda wc: expand(
            "results/{dataset}/reconstruction/{subject}.npz",
            dataset=wc.dataset,
            subject=subjects_of(wc.dataset, ["val"]),
        ),
    output:
        calibration="results/{dataset}/models/patch_calibration.npz",
    log:
        "logs/{dataset}/patch_calibration.log",
    benchmark:
        "benchmarks/{dataset}/patch_calibration.tsv"
    conda:
        "../../envs/arepas.yaml"
    threads: 1
    params:
        code=script_code("patch_calibration.py"),
        subjects=lambda wc: subjects_of(wc.dataset, ["val"]),
        maps=config["maps"],
    script:
        "../scripts/patch_calibration.py"


rule anomaly_maps:
    input:
        unpack(map_model_files),
        unpack(map_reconstructions),
        unpack(map_calibration),
        mapping="results/{dataset}/preprocessed/{subject}/mapping.json",
        transforms="results/{dataset}/preprocessed/{subject}/transforms",
        roi_native="results/{dataset}/preprocessed/{subject}/roi_native.nii.gz",
    output:
        working=intermediate(
            expand(
                "results/{{dataset}}/maps/{method}/{{subject}}_working.nii.gz",
                method=MAP_METHODS,
            )
        ),
        native=expand(
            "results/{{dataset}}/maps/{method}/{{subject}}_native.nii.gz",
            method=MAP_METHODS,
        ),
        slices=intermediate("results/{dataset}/maps/{subject}_slices.npz"),
    log:
        "logs/{dataset}/anomaly_maps/{subject}.log",
    benchmark:
        "benchmarks/{dataset}/anomaly_maps/{subject}.tsv"
    conda:
        "../../envs/arepas.yaml"
    threads: 1
    resources:
        **subject_resources("anomaly_maps"),
    params:
        code=script_code("anomaly_maps.py"),
        methods=config["methods"],
        maps=config["maps"],
        v0_maps=lambda wc: V0_METHOD_SETTINGS[wc.dataset]["maps"] if V0 else {},
        postprocess=config["postprocess"],
        seed=config["seed"],
    script:
        "../scripts/anomaly_maps.py"
