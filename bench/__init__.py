"""Benchmarks of the AREPAS workflow: `python -m bench` (or `make bench`) measures quality, speed
per stage, patch-scoring cost, scaling with the volume size and, where CUDA exists, the GPU, and
writes BENCHMARKS.md. Not part of the installed library."""
