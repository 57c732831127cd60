rule prepare_template:
    output:
        template="results/{dataset}/template/template.nii.gz",
        mask="results/{dataset}/template/mask.nii.gz",
    log:
        "logs/{dataset}/prepare_template.log",
    benchmark:
        "benchmarks/{dataset}/prepare_template.tsv"
    conda:
        "../../envs/arepas.yaml"
    params:
        code=script_code("prepare_template.py"),
        registration=lambda wc: DATASETS[wc.dataset]["registration"],
        spacing=lambda wc: DATASETS[wc.dataset]["spacing"],
    script:
        "../scripts/prepare_template.py"


rule preprocess:
    input:
        unpack(subject_files),
        unpack(template_files),
    output:
        working="results/{dataset}/preprocessed/{subject}/working.nii.gz",
        roi="results/{dataset}/preprocessed/{subject}/roi.nii.gz",
        lesion="results/{dataset}/preprocessed/{subject}/lesion.nii.gz",
        roi_native="results/{dataset}/preprocessed/{subject}/roi_native.nii.gz",
        slices="results/{dataset}/preprocessed/{subject}/slices.npz",
        mapping="results/{dataset}/preprocessed/{subject}/mapping.json",
        # The registration's ANTs transforms (empty without registration). A directory output:
        # Snakemake empties it before the job, so a rerun never finds an older transform there.
        transforms=directory("results/{dataset}/preprocessed/{subject}/transforms"),
    log:
        "logs/{dataset}/preprocess/{subject}.log",
    benchmark:
        "benchmarks/{dataset}/preprocess/{subject}.tsv"
    conda:
        "../../envs/arepas.yaml"
    resources:
        **subject_resources("preprocess"),
    params:
        code=script_code("preprocess.py"),
        settings=preprocess_settings,
        seed=config["seed"],
    script:
        "../scripts/preprocess.py"
