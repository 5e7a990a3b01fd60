"""The demo's runs as VisualDL shows them in a browser (tools/visualdl_check.py); skipped without Chromium."""
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, 'tools'))
import visualdl_check  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not visualdl_check.chromium(), reason='Chromium is not installed')]


def test_visualdl_shows_every_hyperparameter_and_tells_the_runs_apart(demo_project):
  folder, _ = demo_project
  problems, rows = visualdl_check.check(str(folder / 'runs' / 'demo'))
  assert problems == []
  assert [row[1:5] for row in rows] == [['demo/baseline', 'digits_vit', '0', '0'],  # run, experiment, seed,
                                        ['demo/rdrop', 'digits_vit_rdrop', '0', '1']]  # rdrop/alpha
