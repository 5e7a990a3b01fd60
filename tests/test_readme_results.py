"""Measured numbers come from generated fragments (docs/results/*.md); the copies in README.md and docs/*.md
must match them."""
import os
import subprocess
import sys

import pytest

from helpers import ROOT
from tools import readme_results

README = """# Project

Intro.
<!-- begin docs/results/demo.md -->
old numbers
<!-- end docs/results/demo.md -->
Between.
<!-- begin docs/results/bench.md -->
<!-- end docs/results/bench.md -->
End.
"""


def _project(tmp_path, readme=README, fragments=None):
  (tmp_path / 'docs' / 'results').mkdir(parents=True)
  (tmp_path / 'README.md').write_text(readme)
  for name, text in (fragments or {'demo': 'new numbers\n| a | b |\n', 'bench': 'ratio 1.01\n'}).items():
    (tmp_path / 'docs' / 'results' / f'{name}.md').write_text(text)
  return tmp_path


def test_every_page_shows_every_fragment_it_embeds_as_generated():
  """Fails whenever someone edits a number in README.md or docs/ by hand, or regenerates a fragment without
  refreshing the pages (fix: python -m tools.readme_results refresh)."""
  assert readme_results.stale() == []
  proc = subprocess.run([sys.executable, '-m', 'tools.readme_results', 'check'], cwd=ROOT, capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stderr


def test_the_demo_numbers_in_the_readme_are_a_generated_fragment():
  with open(os.path.join(ROOT, 'README.md')) as f:
    lines = f.read().splitlines()
  assert 'docs/results/demo.md' in [fragment for fragment, _, _ in readme_results.blocks(lines)]


def test_refresh_replaces_stale_blocks_and_nothing_else(tmp_path):
  root = _project(tmp_path)
  blocks = [('README.md', 'docs/results/demo.md'), ('README.md', 'docs/results/bench.md')]
  assert readme_results.stale(root) == blocks
  assert readme_results.refresh(root) == blocks
  assert (root / 'README.md').read_text() == README.replace('old numbers\n', 'new numbers\n| a | b |\n').replace(
      '<!-- begin docs/results/bench.md -->\n', '<!-- begin docs/results/bench.md -->\nratio 1.01\n')
  assert readme_results.stale(root) == [] and readme_results.refresh(root) == []


def test_publish_copies_a_summary_into_docs_results_and_the_readme(tmp_path):
  root = _project(tmp_path)
  summary = tmp_path / 'runs' / 'summary.md'
  summary.parent.mkdir()
  summary.write_text('Produced by `SEEDS=3 bash run.sh demo`\n\n| variant | final |\n')
  assert readme_results.publish(str(summary), 'demo', root) == 'docs/results/demo.md'
  assert (root / 'docs' / 'results' / 'demo.md').read_text() == summary.read_text()
  assert summary.read_text() in (root / 'README.md').read_text()
  with pytest.raises(ValueError, match='cat12.md written, but no page has a block for it: add the lines'):
    readme_results.publish(str(summary), 'cat12', root)
  assert (root / 'docs' / 'results' / 'cat12.md').exists()  # written all the same


def test_publish_copies_the_plots_a_summary_shows_and_links_them_from_the_readme(tmp_path):
  root = _project(tmp_path)
  summary = tmp_path / 'runs' / 'sweep' / 'summary.md'
  summary.parent.mkdir(parents=True)
  (summary.parent / 'ablation.png').write_bytes(b'\x89PNG plot')
  summary.write_text('| alpha | final |\n\n![top-1 against alpha](ablation.png)\n')
  readme_results.publish(str(summary), 'demo', root)
  assert (root / 'docs' / 'results' / 'demo_ablation.png').read_bytes() == b'\x89PNG plot'
  assert '![top-1 against alpha](docs/results/demo_ablation.png)' in (root / 'README.md').read_text()
  (summary.parent / 'ablation.png').unlink()
  with pytest.raises(ValueError, match=r'summary.md shows ablation.png, but .*ablation.png does not exist'):
    readme_results.publish(str(summary), 'demo', root)


@pytest.mark.parametrize('readme, message', [
    (README.replace('<!-- end docs/results/demo.md -->\n', ''),
     r'README.md, line 7: <!-- begin docs/results/bench.md --> where <!-- end docs/results/demo.md --> for line 4'),
    (README.replace('<!-- end docs/results/bench.md -->\n', ''),
     r'README.md, line 8: <!-- begin docs/results/bench.md --> has no end line'),
    (README.replace('<!-- begin docs/results/demo.md -->\n', ''),
     r'README.md, line 5: <!-- end docs/results/demo.md --> where a begin line before it was expected'),
])
def test_a_marker_without_its_partner_is_an_error_naming_the_line(tmp_path, readme, message):
  root = _project(tmp_path, readme)
  with pytest.raises(ValueError, match=message):
    readme_results.refresh(root)
  assert (root / 'README.md').read_text() == readme


def test_a_page_under_docs_embeds_fragments_too(tmp_path):
  root = _project(tmp_path, README.replace('<!-- begin docs/results/bench.md -->\n<!-- end docs/results/bench.md -->\n', ''))
  (root / 'docs' / 'performance.md').write_text('# Performance\n<!-- begin docs/results/bench.md -->\n'
                                                '<!-- end docs/results/bench.md -->\n')
  assert readme_results.refresh(root) == [('README.md', 'docs/results/demo.md'),
                                          ('docs/performance.md', 'docs/results/bench.md')]
  assert 'ratio 1.01' in (root / 'docs' / 'performance.md').read_text()


def test_a_missing_fragment_is_an_error_naming_it(tmp_path):
  root = _project(tmp_path, fragments={'demo': 'x\n'})
  with pytest.raises(ValueError, match=r'README.md embeds docs/results/bench.md, but .*bench.md does not exist'):
    readme_results.refresh(root)
