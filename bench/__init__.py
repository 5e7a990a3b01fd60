"""Benchmarks, each run from the project folder as `python -m bench.<name>`; `bash run.sh bench` runs them
all (run_all.py) and writes BENCHMARKS.md."""
