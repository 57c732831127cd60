"""Benchmarks of the AREPAS workflow: `python -m bench` (`make bench`) measures it on this machine
and writes BENCHMARKS.md. Not part of the installed library."""
