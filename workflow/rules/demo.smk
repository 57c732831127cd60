if DEMO:

    rule make_demo:
        output:
            sheet=config["subjects"],
            images=[p for p in SUBJECTS["image"]],
            lesions=[p for p in SUBJECTS["lesion"] if p],
        log:
            "logs/demo/make_demo.log",
        benchmark:
            "benchmarks/demo/make_demo.tsv"
        conda:
            "../../envs/arepas.yaml"
        threads: 2
        params:
            code=script_code("make_demo.py"),
            demo=config["demo"],
            rows=SUBJECTS.reset_index(drop=True).to_dict("records"),
        script:
            "../scripts/make_demo.py"
