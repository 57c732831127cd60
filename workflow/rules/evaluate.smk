rule evaluate:
    input:
        unpack(evaluation_files),
    output:
        per_subject=subject_report(
            "results/{dataset}/metrics/per_subject.tsv",
            caption="../report/per_subject.rst",
            category="4. Evaluation",
            subcategory="{dataset}",
        ),
        summary=report(
            "results/{dataset}/metrics/summary.tsv",
            caption="../report/summary.rst",
            category="4. Evaluation",
            subcategory="{dataset}",
        ),
        curves="results/{dataset}/metrics/pr_curves.npz",
        changes=report(
            "results/{dataset}/metrics/relative_change.tsv",
            caption="../report/relative_change.rst",
            category="4. Evaluation",
            subcategory="{dataset}",
        ),
    log:
        "logs/{dataset}/evaluate.log",
    benchmark:
        "benchmarks/{dataset}/evaluate.tsv"
    conda:
        "../../envs/arepas.yaml"
    params:
        code=script_code("evaluate.py"),
        methods=MAP_METHODS,
        evaluation=config["evaluation"],
        test=lambda wc: subject_rows(wc.dataset, ["test"]),
        val=lambda wc: subject_rows(wc.dataset, ["val"]),
        seed=config["seed"],
    script:
        "../scripts/evaluate.py"


rule summary_table:
    input:
        summaries=expand(
            "results/{dataset}/metrics/summary.tsv", dataset=evaluated_datasets()
        ),
        changes=expand(
            "results/{dataset}/metrics/relative_change.tsv",
            dataset=evaluated_datasets(),
        ),
    output:
        markdown=report(
            "results/summary.md",
            caption="../report/summary_md.rst",
            category="4. Evaluation",
        ),
        table="results/summary.tsv",
        changes="results/relative_change.tsv",
    log:
        "logs/summary_table.log",
    benchmark:
        "benchmarks/summary_table.tsv"
    conda:
        "../../envs/arepas.yaml"
    params:
        code=script_code("summary_table.py"),
        datasets=evaluated_datasets(),
    script:
        "../scripts/summary_table.py"
