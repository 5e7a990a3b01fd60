"""Tools for maintainers, run from the project folder as `python -m tools.<name>`: fakedata (tiny datasets
in the real formats), readme_results (the pages' generated blocks), visualdl_check (VisualDL in Chromium)."""
