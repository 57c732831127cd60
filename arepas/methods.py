"""Names of the anomaly-map methods that more than one stage needs, importable without torch
(the workflow reads them while it builds its job graph)."""

# Ours, beyond the paper: the patch dissimilarity as its quantile among the healthy val subjects'
# patch scores, times the residual (arepas.maps.calibrated_patch_map).
CALIBRATED_METHOD = "arepas_calibrated"
# Methods that need the Siamese scorer's patch map.
PATCH_METHODS = ("patch", "arepas", CALIBRATED_METHOD)
# AREPAS as this project built it before it followed the reference code, kept as a method of its
# own on its own translator and scorer (arepas.clean_method).
CLEAN_METHOD = "arepas_clean"
