"""The demo's runs as a person sees them in VisualDL, in a browser (tools/visualdl_check.py); skipped without
Chromium."""
import pytest

from tools import visualdl_check

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not visualdl_check.chromium(), reason='Chromium is not installed')]


def test_visualdl_opens_on_the_training_curves_and_its_table_holds_numbers(demo_project):
  folder, _ = demo_project
  problems, seen = visualdl_check.check(str(folder / 'runs' / 'demo'), width=1400)
  assert problems == []
  assert [(group['name'], group['open']) for group in seen['groups']] == [('1 train', True), ('2 eval', False)]
  assert seen['groups'][0]['charts'] >= 4  # objective, ce, kl, lr
  assert seen['header'] == ['Trial ID', 'run', 'alpha', 'lr', 'seed', '2 eval/top1', '2 eval/best_top1']
  assert sorted(row[1:5] for row in seen['rows']) == [['demo/baseline', '0', '0.003', '0'], ['demo/rdrop', '1', '0.003', '0']]
  assert seen['landing'].startswith('/app/') and not seen['landing'].endswith('/index')
