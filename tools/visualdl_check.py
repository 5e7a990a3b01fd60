"""Look at runs in VisualDL as a user does: serve them, open the pages in headless Chromium, check them.

  python tools/visualdl_check.py runs/demo [--out runs/demo/visualdl_check]

Serves the folder with VisualDL on 127.0.0.1, saves screenshots of its scalar and hyper-parameter pages
(scalars.png, hyper_parameters.png) for a person to look at, and checks what the pages render: every cell
of the hyper-parameter table holds a value (VisualDL shows a column blank when its name has a dot), and
every run appears under its own short name in both pages. Prints the table; exits 1 when a check fails.
Needs Debian's `chromium` (`apt-get install chromium`); tests/test_visualdl_view.py runs the same
checks on a demo trained for a few updates, and skips when Chromium is absent.
"""
import argparse
import html.parser
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

# What Chromium may do here: no network but the local server, no profile, no GPU, no background updates.
CHROMIUM_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                  '--disable-component-update', '--disable-sync', '--no-first-run')
PAGES = {'scalars': '/app/scalar', 'hyper_parameters': '/app/hyper-parameter'}
RENDER_MILLISECONDS = 20000  # Chromium's virtual time for the page's scripts to fetch and draw


def chromium():
  return shutil.which('chromium') or shutil.which('chromium-browser')


def serve(logdir):
  """(VisualDL server process on a free port of 127.0.0.1, its base URL), once it answers."""
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    port = probe.getsockname()[1]
  server = subprocess.Popen([sys.executable, '-m', 'visualdl.server.app', '--logdir', logdir, '--host',
                             '127.0.0.1', '--port', str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  url = f'http://127.0.0.1:{port}'
  deadline = time.monotonic() + 60
  while True:
    try:
      urllib.request.urlopen(f'{url}/app/api/runs', timeout=5).read()
      return server, url
    except OSError:
      if server.poll() is not None or time.monotonic() > deadline:
        server.kill()
        raise RuntimeError(f'VisualDL did not start serving {logdir} on {url}')
      time.sleep(0.5)


def open_page(url, screenshot=None, size=(1600, 1000)):
  """The page's DOM after its scripts ran; with `screenshot`, also a PNG of it at `size`."""
  with tempfile.TemporaryDirectory() as profile:
    common = [chromium(), *CHROMIUM_FLAGS, f'--user-data-dir={profile}', f'--window-size={size[0]},{size[1]}',
              f'--virtual-time-budget={RENDER_MILLISECONDS}']
    if screenshot:
      subprocess.run([*common, f'--screenshot={screenshot}', url], check=True, capture_output=True, timeout=180)
    return subprocess.run([*common, '--dump-dom', url], check=True, capture_output=True, text=True,
                          timeout=180).stdout


class _Rows(html.parser.HTMLParser):
  """The text of each cell of each `role="row"` element: VisualDL's tables are divs with ARIA roles."""
  VOID = {'area', 'base', 'br', 'col', 'embed', 'hr', 'img', 'input', 'link', 'meta', 'source', 'track', 'wbr'}

  def __init__(self):
    super().__init__()
    self.rows, self.depth, self.cell_depth = [], 0, None

  def handle_starttag(self, tag, attrs):
    if tag in self.VOID:
      return
    self.depth += 1
    role = dict(attrs).get('role')
    if role == 'row':
      self.rows.append([])
    elif role == 'cell' and self.rows:
      self.rows[-1].append('')
      self.cell_depth = self.depth

  def handle_endtag(self, tag):
    if tag in self.VOID:
      return
    if self.cell_depth == self.depth:
      self.cell_depth = None
    self.depth -= 1

  def handle_data(self, data):
    if self.cell_depth is not None:
      self.rows[-1][-1] += data


def table_rows(dom):
  """[[cell text, ...], ...]: the body rows of the first table in `dom`."""
  parser = _Rows()
  parser.feed(dom)
  return [row for row in parser.rows if row]


def check(logdir, out_dir=None):
  """(problems found, hyper-parameter table rows); with `out_dir`, screenshots of the pages go there."""
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
  server, url = serve(logdir)
  try:
    runs = _json(f'{url}/app/api/runs')
    doms = {page: open_page(url + path, out_dir and os.path.join(out_dir, f'{page}.png'))
            for page, path in PAGES.items()}
  finally:
    server.terminate()
    server.wait()
  rows = table_rows(doms['hyper_parameters'])
  problems = []
  if len(rows) != len(runs):
    problems.append(f'the hyper-parameter table shows {len(rows)} rows for {len(runs)} runs')
  for row in rows:
    blank = [column for column, text in enumerate(row) if not text.strip()]
    if blank:
      problems.append(f'{row[0]}: blank cells in columns {blank}')
  # Without a display name VisualDL names a run by its log folder's path, which ends in the workdir's vdl/.
  if len(set(runs)) != len(runs) or any(name.rstrip('/').endswith('/vdl') for name in runs):
    problems.append(f'run names are not short and distinct: {runs}')
  for name in runs:
    if name not in doms['scalars']:
      problems.append(f'the scalar page does not list the run {name!r}')
  return problems, rows


def _json(url):
  return json.loads(urllib.request.urlopen(url, timeout=30).read())['data']


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('logdir', help='folder of runs, as given to visualdl --logdir (e.g. runs/demo)')
  parser.add_argument('--out', help='where the screenshots go (default LOGDIR/visualdl_check)')
  args = parser.parse_args()
  if not chromium():
    sys.exit('error: Chromium is not installed (apt-get install chromium)')
  out = args.out or os.path.join(args.logdir, 'visualdl_check')
  problems, rows = check(args.logdir, out)
  for row in rows:
    print(' | '.join(cell.strip() for cell in row))
  print(f'screenshots: {os.path.join(out, "scalars.png")}, {os.path.join(out, "hyper_parameters.png")}')
  for problem in problems:
    print(f'problem: {problem}', file=sys.stderr)
  sys.exit(1 if problems else 0)


if __name__ == '__main__':
  main()
