"""The demo's runs as a person sees them in VisualDL, in a browser (tools/visualdl_check.py); skipped without
Chromium."""
import pytest

from tools import visualdl_check

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not visualdl_check.chromium(), reason='Chromium is not installed')]


def test_visualdl_opens_on_the_training_curves_and_its_table_fits_the_screen(demo_project):
  folder, _ = demo_project
  problems, seen = visualdl_check.check(str(folder / 'runs' / 'demo'), width=1400)
  assert problems == []
  assert [(group['name'], group['open']) for group in seen['groups']] == [('1 train', True), ('2 eval', False)]
  assert seen['groups'][0]['charts'] >= 4  # objective, ce, kl, lr
  assert seen['header'] == ['Trial ID', 'run', 'top1 (%)', 'best top1 (%)', '2 eval/collapsed']
  assert [row[1] for row in seen['rows']] == ['demo/baseline', 'demo/rdrop']
  assert all(row[2].endswith(' at update 20') for row in seen['rows'])  # SHORT_TRAINING: 20 updates
