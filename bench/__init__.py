"""Benchmarks of the AREPAS workflow (`python -m bench`, `make bench`); they write BENCHMARKS.md."""
