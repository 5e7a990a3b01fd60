"""Measured numbers are generated, never typed: each measured figure lives in a fragment under docs/results/
that a command of this repository wrote (stating that command, the date and the machine), and the pages
(README.md and docs/*.md) embed a verbatim copy of a fragment between two marker lines:

  <!-- begin docs/results/demo.md -->
  (the fragment)
  <!-- end docs/results/demo.md -->

Maintainers, after a measurement:

  python -m tools.readme_results publish runs/demo/summary.md demo    # -> docs/results/demo.md, pages refreshed
  python -m tools.readme_results publish runs/sweep_digits_vit_rdrop_rdrop.alpha/summary.md ablation_alpha
                                             # ... and its plot -> docs/results/ablation_alpha_ablation.png
  python -m tools.readme_results refresh     # every page's blocks from their fragments (after editing one)
  python -m tools.readme_results check       # exit 1 naming every block that differs from its fragment

A user's `bash run.sh demo` writes its summary into the run folder only; nothing under docs/ changes until a
maintainer publishes it. `bash run.sh bench` (a maintainer's command) writes docs/results/bench.md and
refreshes the pages itself. tests/test_readme_results.py fails while a page's copy differs from a fragment.
"""
import glob
import os
import re
import shutil
import sys

from utils.io import write_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RESULTS = 'docs/results'
MARKER = re.compile(r'<!-- (begin|end) (docs/results/[\w.-]+\.md) -->')
IMAGE = re.compile(r'(!\[[^\]]*\]\()([^):/][^):]*\.png)\)')  # a markdown image at a relative path


def pages(root=ROOT):
  """The pages that may embed fragments, relative to `root`: README.md, then docs/*.md."""
  return ['README.md'] + sorted(os.path.relpath(path, root) for path in glob.glob(os.path.join(root, 'docs', '*.md')))


def blocks(lines, page='README.md'):
  """[(fragment path, index of the begin line, index of the end line)] in a page's text `lines`.

  A marker without its partner is a ValueError naming the page's line: refreshing would eat the text after it.
  """
  found, opened = [], None
  for index, line in enumerate(lines):
    marker = MARKER.fullmatch(line.strip())
    if not marker:
      continue
    kind, fragment = marker.groups()
    if kind == 'begin' and opened is None:
      opened = (fragment, index)
    elif kind == 'end' and opened is not None and opened[0] == fragment:
      found.append((fragment, opened[1], index))
      opened = None
    else:
      expected = f'<!-- end {opened[0]} --> for line {opened[1] + 1}' if opened else 'a begin line before it'
      raise ValueError(f'{page}, line {index + 1}: {line.strip()} where {expected} was expected')
  if opened:
    raise ValueError(f'{page}, line {opened[1] + 1}: <!-- begin {opened[0]} --> has no end line '
                     f'<!-- end {opened[0]} -->')
  return found


def _fragment_lines(root, fragment, page):
  path = os.path.join(root, fragment)
  if not os.path.isfile(path):
    raise ValueError(f'{page} embeds {fragment}, but {os.path.abspath(path)} does not exist: write it with '
                     f'the command that produces it, or remove the block')
  with open(path) as f:
    text = f.read()
  return (text if text.endswith('\n') else text + '\n').splitlines(keepends=True)


def _page_lines(root, page):
  with open(os.path.join(root, page)) as f:
    return f.read().splitlines(keepends=True)


def stale(root=ROOT):
  """[(page, fragment path)] of the blocks whose copy differs from the fragment."""
  found = []
  for page in pages(root):
    lines = _page_lines(root, page)
    found += [(page, fragment) for fragment, begin, end in blocks(lines, page)
              if lines[begin + 1:end] != _fragment_lines(root, fragment, page)]
  return found


def refresh(root=ROOT):
  """Rewrite every page's blocks from their fragments; returns the (page, fragment) blocks that changed."""
  changed = []
  for page in pages(root):
    lines = _page_lines(root, page)
    changed_here = []
    for fragment, begin, end in reversed(blocks(lines, page)):  # from the bottom: earlier indices stay valid
      new = _fragment_lines(root, fragment, page)
      if lines[begin + 1:end] != new:
        lines[begin + 1:end] = new
        changed_here.insert(0, (page, fragment))
    if changed_here:
      write_atomic(os.path.join(root, page), ''.join(lines))
    changed += changed_here
  return changed


def publish(summary, name, root=ROOT):
  """Copy a generated `summary` into docs/results/<name>.md and refresh the pages; returns the fragment path.

  PNG images the summary shows by a path relative to it are copied to docs/results/<name>_<file>, and their
  links rewritten relative to the repository's root, where README.md is. ValueError when no page has a
  block for it yet (the fragment is written all the same).
  """
  if not os.path.isfile(summary):
    raise ValueError(f'{os.path.abspath(summary)} does not exist: run the command that writes it first')
  fragment = f'{RESULTS}/{name}.md'
  with open(summary) as f:
    text = f.read()
  os.makedirs(os.path.join(root, RESULTS), exist_ok=True)

  def copy_image(link):
    image = os.path.join(os.path.dirname(summary), link.group(2))
    if not os.path.isfile(image):
      raise ValueError(f'{summary} shows {link.group(2)}, but {os.path.abspath(image)} does not exist')
    copy = f'{RESULTS}/{name}_{os.path.basename(image)}'
    shutil.copyfile(image, os.path.join(root, copy))
    return f'{link.group(1)}{copy})'

  write_atomic(os.path.join(root, fragment), IMAGE.sub(copy_image, text))
  refresh(root)
  if not any(embedded == fragment for page in pages(root) for embedded, _, _ in blocks(_page_lines(root, page), page)):
    raise ValueError(f'{fragment} written, but no page has a block for it: add the lines '
                     f'<!-- begin {fragment} --> and <!-- end {fragment} --> where it belongs, then run '
                     f'python -m tools.readme_results refresh')
  return fragment


def _listed(blocks_):
  return ', '.join(f'{fragment} in {page}' for page, fragment in blocks_)


def main(argv):
  usage = ('usage: python -m tools.readme_results publish SUMMARY NAME | refresh | check\n'
           '  publish: copy SUMMARY (e.g. runs/demo/summary.md) into docs/results/NAME.md and refresh the pages')
  try:
    if argv[:1] == ['publish'] and len(argv) == 3:
      fragment = publish(argv[1], argv[2])
      print(f'{fragment} written; the pages show it')
    elif argv == ['refresh']:
      changed = refresh()
      print(f'refreshed {_listed(changed)}' if changed else 'every page already matches docs/results')
    elif argv == ['check']:
      differing = stale()
      if differing:
        sys.exit(f'these blocks differ from their fragments: {_listed(differing)}; run '
                 f'python -m tools.readme_results refresh')
      print('every page matches the fragments it embeds')
    else:
      sys.exit(usage)
  except (ValueError, OSError) as err:
    sys.exit(f'error: {err}')


if __name__ == '__main__':
  main(sys.argv[1:])
