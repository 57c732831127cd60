# Binary lesion masks for `test` and `predict` subjects (the clinical use: scans without labels),
# each method's map cut at the threshold chosen on the dataset's healthy `val` subjects.


rule mask_thresholds:
    input:
        unpack(mask_threshold_files),
    output:
        report(
            "results/{dataset}/masks/thresholds.tsv",
            caption="../report/mask_thresholds.rst",
            category="6. Lesion masks",
            subcategory="{dataset}",
        ),
    log:
        "logs/{dataset}/mask_thresholds.log",
    benchmark:
        "benchmarks/{dataset}/mask_thresholds.tsv"
    conda:
        "../../envs/arepas.yaml"
    params:
        code=script_code("mask_thresholds.py"),
        methods=MASK_METHODS,
        evaluation=config["evaluation"],
        val=lambda wc: subject_rows(wc.dataset, ["val"]),
    script:
        "../scripts/mask_thresholds.py"


rule lesion_masks:
    input:
        image=lambda wc: SUBJECTS.loc[wc.subject, "image"],
        maps=lambda wc: mask_map_files(wc.dataset, wc.subject),
        roi="results/{dataset}/preprocessed/{subject}/roi_native.nii.gz",
        thresholds="results/{dataset}/masks/thresholds.tsv",
    output:
        masks=[
            subject_report(
                path,
                caption="../report/lesion_mask.rst",
                category="6. Lesion masks",
                subcategory="{dataset}",
            )
            for path in expand(
                "results/{{dataset}}/masks/{method}/{{subject}}.nii.gz",
                method=MASK_METHODS,
            )
        ],
        figure=subject_report(
            "results/{dataset}/figures/masks/{subject}.png",
            caption="../report/lesion_mask_figure.rst",
            category="6. Lesion masks",
            subcategory="{dataset}",
        ),
    log:
        "logs/{dataset}/lesion_masks/{subject}.log",
    benchmark:
        "benchmarks/{dataset}/lesion_masks/{subject}.tsv"
    conda:
        "../../envs/arepas.yaml"
    resources:
        **subject_resources("lesion_masks"),
    params:
        code=script_code("lesion_masks.py"),
        methods=MASK_METHODS,
        dataset=lambda wc: DATASETS[wc.dataset],
        split=lambda wc: SUBJECTS.loc[wc.subject, "split"],
    script:
        "../scripts/lesion_masks.py"
