"""README numbers are generated, never typed: each measured figure lives in a fragment under docs/results/
that a command of this repository wrote (stating that command, the date and the machine), and README.md
embeds a verbatim copy of each fragment between two marker lines:

  <!-- begin docs/results/demo.md -->
  (the fragment)
  <!-- end docs/results/demo.md -->

Maintainers, after a measurement:

  python -m tools.readme_results publish runs/demo/summary.md demo    # -> docs/results/demo.md, README refreshed
  python -m tools.readme_results refresh     # every README block from its fragment (after editing a fragment)
  python -m tools.readme_results check       # exit 1 naming every block that differs from its fragment

A user's `bash run.sh demo` writes its summary into the run folder only; nothing under docs/ changes until a
maintainer publishes it. `bash run.sh bench` (a maintainer's command) writes docs/results/bench.md and
refreshes README.md itself. tests/test_readme_results.py fails while README's copy differs from a fragment.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = 'README.md'
RESULTS = 'docs/results'
MARKER = re.compile(r'<!-- (begin|end) (docs/results/[\w.-]+\.md) -->')


def _write(path, text):
  """Through a temporary file and a rename, as training.workdir.write_atomic does (which would load Paddle)."""
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)


def blocks(lines):
  """[(fragment path, index of the begin line, index of the end line)] in README's `lines` (text lines).

  A marker without its partner is a ValueError naming README's line: refreshing would eat the text after it.
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
      raise ValueError(f'{README}, line {index + 1}: {line.strip()} where {expected} was expected')
  if opened:
    raise ValueError(f'{README}, line {opened[1] + 1}: <!-- begin {opened[0]} --> has no end line '
                     f'<!-- end {opened[0]} -->')
  return found


def _fragment_lines(root, fragment):
  path = os.path.join(root, fragment)
  if not os.path.isfile(path):
    raise ValueError(f'{README} embeds {fragment}, but {os.path.abspath(path)} does not exist: write it with '
                     f'the command that produces it, or remove the block')
  with open(path) as f:
    text = f.read()
  return (text if text.endswith('\n') else text + '\n').splitlines(keepends=True)


def _readme_lines(root):
  with open(os.path.join(root, README)) as f:
    return f.read().splitlines(keepends=True)


def stale(root=ROOT):
  """Fragment paths whose copy in README.md differs from the file."""
  lines = _readme_lines(root)
  return [fragment for fragment, begin, end in blocks(lines)
          if lines[begin + 1:end] != _fragment_lines(root, fragment)]


def refresh(root=ROOT):
  """Rewrite README.md's blocks from their fragments; returns the fragments whose block changed."""
  lines = _readme_lines(root)
  changed = []
  for fragment, begin, end in reversed(blocks(lines)):  # from the bottom: earlier indices stay valid
    new = _fragment_lines(root, fragment)
    if lines[begin + 1:end] != new:
      lines[begin + 1:end] = new
      changed.insert(0, fragment)
  if changed:
    _write(os.path.join(root, README), ''.join(lines))
  return changed


def publish(summary, name, root=ROOT):
  """Copy a generated `summary` into docs/results/<name>.md and refresh README.md; returns the fragment path.

  ValueError when README.md has no block for it yet (the fragment is written all the same).
  """
  if not os.path.isfile(summary):
    raise ValueError(f'{os.path.abspath(summary)} does not exist: run the command that writes it first')
  fragment = f'{RESULTS}/{name}.md'
  with open(summary) as f:
    text = f.read()
  os.makedirs(os.path.join(root, RESULTS), exist_ok=True)
  _write(os.path.join(root, fragment), text)
  refresh(root)
  if not any(embedded == fragment for embedded, _, _ in blocks(_readme_lines(root))):
    raise ValueError(f'{fragment} written, but {README} has no block for it: add the lines '
                     f'<!-- begin {fragment} --> and <!-- end {fragment} --> where it belongs, then run '
                     f'python -m tools.readme_results refresh')
  return fragment


def main(argv):
  usage = ('usage: python -m tools.readme_results publish SUMMARY NAME | refresh | check\n'
           '  publish: copy SUMMARY (e.g. runs/demo/summary.md) into docs/results/NAME.md and refresh README.md')
  try:
    if argv[:1] == ['publish'] and len(argv) == 3:
      fragment = publish(argv[1], argv[2])
      print(f'{fragment} written; README.md shows it')
    elif argv == ['refresh']:
      changed = refresh()
      print(f'README.md refreshed from {", ".join(changed)}' if changed else 'README.md already matches docs/results')
    elif argv == ['check']:
      differing = stale()
      if differing:
        sys.exit(f'README.md differs from {", ".join(differing)}: run python -m tools.readme_results refresh')
      print('README.md matches every fragment it embeds')
    else:
      sys.exit(usage)
  except (ValueError, OSError) as err:
    sys.exit(f'error: {err}')


if __name__ == '__main__':
  main(sys.argv[1:])
