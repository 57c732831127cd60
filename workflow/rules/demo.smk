if DEMO:

    rule make_demo:
        output:
            sheet=config["subjects"],
            images=[p for p in SUBJECTS["image"]],
            lesions=[p for p in SUBJECTS["lesion"] if p],
        params:
            demo=config["demo"],
            rows=SUBJECTS.reset_index(drop=True).to_dict("records"),
        log:
            "logs/demo/make_demo.log",
        benchmark:
            "benchmarks/demo/make_demo.tsv"
        threads: 2
        script:
            "../scripts/make_demo.py"
