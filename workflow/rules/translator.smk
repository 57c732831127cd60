rule train_translator:
    input:
        train=lambda wc: preprocessed(wc.dataset, subjects_of(wc.dataset, ["train"])),
        val=lambda wc: preprocessed(wc.dataset, subjects_of(wc.dataset, ["val"])),
    output:
        model="results/{dataset}/models/translator.pt",
        history=report(
            "results/{dataset}/models/translator_history.tsv",
            caption="../report/translator_history.rst",
            category="2. Translator",
            subcategory="{dataset}",
        ),
        # Does the translator use its edges? Checked on healthy val slices after training.
        edge_reliance=report(
            "results/{dataset}/models/translator_edge_reliance.tsv",
            caption="../report/translator_edge_reliance.rst",
            category="2. Translator",
            subcategory="{dataset}",
        ),
        usage="results/{dataset}/models/translator_usage.tsv",
    log:
        "logs/{dataset}/train_translator.log",
    cache: "omit-software"
    # The longest jobs, on the path to every map: started before the autoencoders, which then
    # fill the cores beside them instead of holding a translator back.
    priority: 10
    conda:
        "../../envs/arepas.yaml"
    # One thread per training job: on a 2-core machine the two datasets then train side by side,
    # more throughput than one job on two threads (docs/studies.md, "Translator training step").
    # The slurm profile raises it with set-threads (GPU jobs need CPUs to feed the GPU).
    threads: 1
    resources:
        **training_resources("translator"),
        gpu=1,
    params:
        code=script_code("train_translator.py"),
        settings=lambda wc: DATASETS[wc.dataset]["translator"],
        preprocessing=preprocess_settings,
        checkpoint_dir=lambda wc: f"results/{wc.dataset}/models/translator_checkpoint",
        seed=config["seed"],
        registered=lambda wc: DATASETS[wc.dataset]["registration"]["transform"]
        != "none",
    script:
        "../scripts/train_translator.py"


rule reconstruct:
    input:
        slices="results/{dataset}/preprocessed/{subject}/slices.npz",
        working="results/{dataset}/preprocessed/{subject}/working.nii.gz",
        model=translator_file,
    output:
        reconstruction=intermediate("results/{dataset}/reconstruction/{subject}.npz"),
        volume=intermediate("results/{dataset}/reconstruction/{subject}_working.nii.gz"),
    log:
        "logs/{dataset}/reconstruct/{subject}.log",
    benchmark:
        "benchmarks/{dataset}/reconstruct/{subject}.tsv"
    conda:
        "../../envs/arepas.yaml"
    threads: 1
    resources:
        **subject_resources("reconstruct"),
    params:
        code=script_code("reconstruct.py"),
    script:
        "../scripts/reconstruct.py"


# Method arepas_v0: the same training and reconstruction with the earlier choices
# (arepas.v0_method.v0_method_settings), written under a folder of its own.
use rule train_translator as train_translator_v0 with:
    output:
        model="results/{dataset}/models/arepas_v0/translator.pt",
        history=report(
            "results/{dataset}/models/arepas_v0/translator_history.tsv",
            caption="../report/translator_history.rst",
            category="2. Translator",
            subcategory="{dataset}: arepas_v0",
        ),
        edge_reliance=report(
            "results/{dataset}/models/arepas_v0/translator_edge_reliance.tsv",
            caption="../report/translator_edge_reliance.rst",
            category="2. Translator",
            subcategory="{dataset}: arepas_v0",
        ),
        usage="results/{dataset}/models/arepas_v0/translator_usage.tsv",
    log:
        "logs/{dataset}/arepas_v0/train_translator.log",
    params:
        code=script_code("train_translator.py"),
        settings=lambda wc: V0_METHOD_SETTINGS[wc.dataset]["translator"],
        preprocessing=preprocess_settings,
        checkpoint_dir=lambda wc: f"results/{wc.dataset}/models/arepas_v0/translator_checkpoint",
        seed=config["seed"],
        registered=lambda wc: DATASETS[wc.dataset]["registration"]["transform"]
        != "none",


use rule reconstruct as reconstruct_v0 with:
    input:
        slices="results/{dataset}/preprocessed/{subject}/slices.npz",
        working="results/{dataset}/preprocessed/{subject}/working.nii.gz",
        model=lambda wc: model_file(wc.dataset, "arepas_v0/translator"),
    output:
        reconstruction=intermediate(
            "results/{dataset}/reconstruction/arepas_v0/{subject}.npz"
        ),
        volume=intermediate(
            "results/{dataset}/reconstruction/arepas_v0/{subject}_working.nii.gz"
        ),
    log:
        "logs/{dataset}/arepas_v0/reconstruct/{subject}.log",
    benchmark:
        "benchmarks/{dataset}/arepas_v0/reconstruct/{subject}.tsv"
