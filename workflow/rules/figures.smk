rule subject_figure:
    input:
        slices="results/{dataset}/maps/{subject}_slices.npz",
    output:
        subject_report(
            "results/{dataset}/figures/subjects/{subject}.png",
            caption="../report/subject_panel.rst",
            category="5. Figures",
            subcategory="{dataset}: subjects",
        ),
    log:
        "logs/{dataset}/subject_figure/{subject}.log",
    benchmark:
        "benchmarks/{dataset}/subject_figure/{subject}.tsv"
    conda:
        "../../envs/arepas.yaml"
    resources:
        **subject_resources("subject_figure"),
    params:
        code=script_code("subject_figure.py"),
    script:
        "../scripts/subject_figure.py"


rule dataset_figures:
    input:
        per_subject="results/{dataset}/metrics/per_subject.tsv",
        summary="results/{dataset}/metrics/summary.tsv",
        curves="results/{dataset}/metrics/pr_curves.npz",
    output:
        pr=report(
            "results/{dataset}/figures/pr_curves.png",
            caption="../report/pr_curves.rst",
            category="5. Figures",
            subcategory="{dataset}",
        ),
        dice=subject_report(
            "results/{dataset}/figures/dice_per_subject.png",
            caption="../report/dice_strip.rst",
            category="5. Figures",
            subcategory="{dataset}",
        ),
    log:
        "logs/{dataset}/dataset_figures.log",
    benchmark:
        "benchmarks/{dataset}/dataset_figures.tsv"
    conda:
        "../../envs/arepas.yaml"
    params:
        code=script_code("dataset_figures.py"),
    script:
        "../scripts/dataset_figures.py"


# Training curves are separate rules: a dataset with pretrained models has none to draw.
# The translator's rule also draws its edge-reliance check, which needs the trained model.
rule translator_figure:
    input:
        history="results/{dataset}/models/translator_history.tsv",
        edge_reliance="results/{dataset}/models/translator_edge_reliance.tsv",
        model="results/{dataset}/models/translator.pt",
        train=lambda wc: preprocessed(wc.dataset, subjects_of(wc.dataset, ["train"])),
        val=lambda wc: preprocessed(wc.dataset, subjects_of(wc.dataset, ["val"])),
    output:
        curves=report(
            "results/{dataset}/figures/translator_training.png",
            caption="../report/translator_training.rst",
            category="2. Translator",
            subcategory="{dataset}",
        ),
        edge_reliance=subject_report(
            "results/{dataset}/figures/translator_edge_reliance.png",
            caption="../report/translator_edge_reliance_figure.rst",
            category="2. Translator",
            subcategory="{dataset}",
        ),
    log:
        "logs/{dataset}/translator_figure.log",
    benchmark:
        "benchmarks/{dataset}/translator_figure.tsv"
    conda:
        "../../envs/arepas.yaml"
    params:
        code=script_code("training_figure.py"),
        columns=["g_l1", "val_l1"],
        title="translator L1",
    script:
        "../scripts/training_figure.py"


rule scorer_figure:
    input:
        "results/{dataset}/models/scorer_history.tsv",
    output:
        report(
            "results/{dataset}/figures/scorer_training.png",
            caption="../report/scorer_training.rst",
            category="3. Patch scorer",
            subcategory="{dataset}",
        ),
    log:
        "logs/{dataset}/scorer_figure.log",
    benchmark:
        "benchmarks/{dataset}/scorer_figure.tsv"
    conda:
        "../../envs/arepas.yaml"
    params:
        code=script_code("training_figure.py"),
        columns=["train_acc", "heldout_acc"],
        title="patch scorer accuracy",
    script:
        "../scripts/training_figure.py"
