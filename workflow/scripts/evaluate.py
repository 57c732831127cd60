import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

from arepas import io
from arepas.evaluation import evaluate_dataset
from arepas.methods import PATCH_METHODS

test_rows, val_rows = snakemake.params.test, snakemake.params.val
# Every file comes from the rule's input, listed in the order of the test rows, then the val
# rows (rule evaluate's input function); strict zips refuse a list of another length.
subjects = [row["subject"] for row in test_rows + val_rows]
roi_files = dict(zip(subjects, snakemake.input.roi, strict=True))
lesion_files = dict(zip(subjects[: len(test_rows)], snakemake.input.lesion, strict=True))
map_files = {
    method: dict(zip(subjects, snakemake.input[f"maps_{method}"], strict=True))
    for method in snakemake.params.methods
}

# Methods whose maps depend on each scorer, flagged when that scorer stalled.
stalled = {}
for key, dependent in (("scorer", PATCH_METHODS), ("v0_scorer", ("arepas_v0",))):
    if key in snakemake.input.keys():
        from arepas.scorer import load_scorer

        reason = load_scorer(snakemake.input[key])[2].get("stalled", "")
        if reason:
            print(f"WARNING: the {key} stalled ({reason}); {', '.join(dependent)} rows are flagged")
            stalled.update(dict.fromkeys(dependent, reason))

result = evaluate_dataset(
    snakemake.wildcards.dataset,
    snakemake.params.methods,
    [row["subject"] for row in test_rows],
    [row["subject"] for row in val_rows],
    load_map=lambda method, s: io.load_volume(map_files[method][s], s, "map")[0],
    load_roi=lambda s: io.load_volume(roi_files[s], s, "roi")[0] > 0,
    load_lesion=lambda s: io.load_volume(lesion_files[s], s, "lesion")[0] > 0,
    options=snakemake.params.evaluation,
    seed=snakemake.params.seed,
    stalled=stalled,
)
io.save_table(snakemake.output.per_subject, result["per_subject"])
io.save_table(snakemake.output.summary, result["summary"])
io.save_table(snakemake.output.changes, result["changes"])
io.save_arrays(snakemake.output.curves, **result["curves"])
