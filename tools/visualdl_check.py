"""Look at runs in VisualDL as a person does: serve them, open the pages in headless Chromium at a laptop's
width, check what is in view on arrival, and save screenshots.

  python -m tools.visualdl_check runs/demo [--out runs/demo/visualdl_check] [--width 1400]

Checks, at that width (VisualDL 2.5.3):
- scalars: every tag that each run's metrics.jsonl implies is served; the one group VisualDL opens on
  arrival is the training group, and it draws every training chart;
- hyper-parameters: one row per run, no blank cell, the results (VisualDL's metric columns) numbers;
- the bare address: where VisualDL 2.5.3 lands is its own choice (Scalars, Graphs or Hyper Parameters here,
  from one server start to the next), so it is reported, and the address that the runs' log prints for the
  curves (training.runlog.VISUALDL_CURVES) is the one checked above;
- both pages list every run under its own short name.
Prints what a person sees (the groups with their charts, the table under its header), the screenshots'
paths and every failed check; exits 1 when one fails. Needs Debian's `chromium` (`apt-get install
chromium`), driven through the DevTools protocol on a pipe; tests/test_visualdl_view.py runs the same
checks on a demo trained for a few updates, and skips where Chromium is absent.
"""
import argparse
import base64
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

from training.runlog import HPARAM_METRICS, VISUALDL_CURVES, VISUALDL_GROUPS, run_name
from utils.io import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What Chromium may do here: no network but the local server, no profile, no GPU, no background updates.
CHROMIUM_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                  '--disable-component-update', '--disable-sync', '--no-first-run')
PAGES = {'scalars': urllib.parse.urlparse(VISUALDL_CURVES).path, 'hyper_parameters': '/app/hyper-parameter'}
HEIGHT = 900

# The scalar page: each tag group is a section whose header is <h3>name</h3>; an open one draws its charts
# (one canvas each) in a second child of the section.
GROUPS_JS = '''JSON.stringify([...document.querySelectorAll('h3')].map(h => {
  const section = h.parentElement.parentElement;
  return {name: h.textContent, open: section.children.length > 1, charts: section.querySelectorAll('canvas').length};
}))'''
# The hyper-parameter table: divs with ARIA roles; header cells are the first row's children.
TABLE_JS = '''(() => {
  const table = document.querySelector('[role=table]');
  const rows = [...document.querySelectorAll('[role=row]')].map(row => [...row.children]);
  const right = table.parentElement.getBoundingClientRect().right;
  return JSON.stringify({header: rows[0].map(cell => cell.textContent.trim()),
                         hidden: rows[0].filter(cell => cell.getBoundingClientRect().right > right + 1)
                                        .map(cell => cell.textContent.trim()),
                         rows: rows.slice(1).map(row => row.map(cell => cell.textContent.trim()))});
})()'''


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


class Browser:
  """Headless Chromium with one page, driven through the DevTools protocol on a pipe (file descriptors 3
  and 4 of the browser, messages of JSON ended by a NUL byte): no extra package, no open port."""

  def __init__(self, width):
    self._profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
    commands_in, self._commands = os.pipe()
    self._replies, replies_out = os.pipe()

    def as_fds_3_and_4():
      os.dup2(commands_in, 3)
      os.dup2(replies_out, 4)

    self._process = subprocess.Popen(
        [chromium(), *CHROMIUM_FLAGS, f'--user-data-dir={self._profile.name}', '--remote-debugging-pipe',
         f'--window-size={width},{HEIGHT}'], pass_fds=(3, 4, commands_in, replies_out), preexec_fn=as_fds_3_and_4,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(commands_in)
    os.close(replies_out)
    self._pending, self._last_id, self._session = b'', 0, None
    target = self.call('Target.createTarget', url='about:blank')['targetId']
    self._session = self.call('Target.attachToTarget', targetId=target, flatten=True)['sessionId']
    self.call('Emulation.setDeviceMetricsOverride', width=width, height=HEIGHT, deviceScaleFactor=1, mobile=False)

  def call(self, method, **params):
    """The result of one DevTools command (on the page once one is attached); events are passed over."""
    self._last_id += 1
    message = {'id': self._last_id, 'method': method, 'params': params}
    if self._session:
      message['sessionId'] = self._session
    os.write(self._commands, json.dumps(message).encode() + b'\0')
    while True:
      while b'\0' not in self._pending:
        chunk = os.read(self._replies, 1 << 16)
        if not chunk:
          raise RuntimeError('Chromium ended')
        self._pending += chunk
      text, self._pending = self._pending.split(b'\0', 1)
      reply = json.loads(text)
      if reply.get('id') == self._last_id:
        if 'error' in reply:
          raise RuntimeError(f'{method}: {reply["error"]}')
        return reply.get('result', {})

  def evaluate(self, expression):
    return self.call('Runtime.evaluate', expression=expression, returnByValue=True)['result'].get('value')

  def open(self, url, ready, timeout=60):
    """Navigate, then wait until the JavaScript expression `ready` is true (the page's data has arrived)."""
    self.call('Page.navigate', url=url)
    deadline = time.monotonic() + timeout
    while not self.evaluate(ready):
      if time.monotonic() > deadline:
        raise RuntimeError(f'{url} did not finish rendering in {timeout} s')
      time.sleep(0.5)
    time.sleep(1.0)  # charts animate in

  def screenshot(self, path):
    with open(path, 'wb') as f:
      f.write(base64.b64decode(self.call('Page.captureScreenshot', format='png')['data']))

  def close(self):
    try:
      self.call('Browser.close')
    except RuntimeError:
      pass  # it may end before it replies
    os.close(self._commands)
    os.close(self._replies)
    try:
      self._process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self._process.kill()
      self._process.wait()
    shutil.rmtree(self._profile.name, ignore_errors=True)  # its helper processes may still be writing there


def expected_tags(logdir):
  """{run name: sorted VisualDL tags} that the runs' metrics.jsonl imply."""
  tags = {}
  for metrics in glob.glob(os.path.join(logdir, '**', 'metrics.jsonl'), recursive=True):
    rows, _ = read_jsonl(metrics)
    tags[run_name(os.path.dirname(metrics))] = sorted({f'{VISUALDL_GROUPS[row["group"]]}/{name}' for row in rows
                                                       for name in row if name not in ('update', 'group')})
  return tags


def check(logdir, out_dir=None, width=1400):
  """(problems found, what a person sees: {'groups': [...], 'header': [...], 'rows': [[...]]})."""
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
  server, url = serve(logdir)
  browser = None
  try:
    served = _json(f'{url}/app/api/scalar/tags')
    browser = Browser(width)
    browser.open(url, "!location.pathname.endsWith('/index')")
    landing = browser.evaluate('location.pathname')
    browser.open(url + PAGES['scalars'], "document.querySelectorAll('canvas').length > 0")
    groups = json.loads(browser.evaluate(GROUPS_JS))
    scalar_text = browser.evaluate('document.body.innerText')
    if out_dir:
      browser.screenshot(os.path.join(out_dir, 'scalars.png'))
    browser.open(url + PAGES['hyper_parameters'], "document.querySelectorAll('[role=row]').length > 1")
    table = json.loads(browser.evaluate(TABLE_JS))
    if out_dir:
      browser.screenshot(os.path.join(out_dir, 'hyper_parameters.png'))
  finally:
    if browser:
      browser.close()
    server.terminate()
    server.wait()
  return (_problems(expected_tags(logdir), served, groups, scalar_text, table),
          {'landing': landing, 'groups': groups, **table})


def _problems(expected, served, groups, scalar_text, table):
  problems = []
  served_tags = dict(zip(served['runs'], map(sorted, served['tags'])))
  for run, tags in expected.items():
    if served_tags.get(run) != tags:
      problems.append(f'{run}: VisualDL serves the tags {served_tags.get(run)}, its metrics.jsonl implies {tags}')
    if run not in scalar_text:
      problems.append(f'the scalar page does not list the run {run!r}')
  train_group = VISUALDL_GROUPS['train']
  train_charts = max((sum(tag.startswith(f'{train_group}/') for tag in tags) for tags in expected.values()), default=0)
  opened = [group for group in groups if group['open']]
  if [group['name'] for group in opened] != [train_group] or opened[0]['charts'] < train_charts:
    problems.append(f'on arrival VisualDL opens {opened}, not the group {train_group!r} with its {train_charts} charts')
  if len(table['rows']) != len(expected):
    problems.append(f'the hyper-parameter table shows {len(table["rows"])} rows for {len(expected)} runs')
  for row in table['rows']:
    blank = [table['header'][column] for column, text in enumerate(row) if not text]
    if blank:
      problems.append(f'{row[0]}: blank cells in the columns {blank}')
  for column in HPARAM_METRICS:
    for row in table['rows']:
      if column in table['header'] and not _is_number(row[table['header'].index(column)]):
        problems.append(f'{row[0]}: {column} shows {row[table["header"].index(column)]!r}, not a number')
  return problems


def _is_number(text):
  try:
    float(text)
    return True
  except ValueError:
    return False


def _json(url):
  return json.loads(urllib.request.urlopen(url, timeout=30).read())['data']


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('logdir', help='folder of runs, as given to visualdl --logdir (e.g. runs/demo)')
  parser.add_argument('--out', help='where the screenshots go (default LOGDIR/visualdl_check)')
  parser.add_argument('--width', type=int, default=1400, help='browser window width in pixels (default 1400)')
  args = parser.parse_args()
  if not chromium():
    sys.exit('error: Chromium is not installed (apt-get install chromium)')
  out = args.out or os.path.join(args.logdir, 'visualdl_check')
  problems, seen = check(args.logdir, out, args.width)
  print(f'the bare address landed on {seen["landing"]}; the curves: {VISUALDL_CURVES}')
  print(f'scalars, on arrival at {args.width} px (tag groups in VisualDL\'s order):')
  for group in seen['groups']:
    print(f'  {group["name"]}: {"open, " + str(group["charts"]) + " charts drawn" if group["open"] else "closed"}')
  print('hyper-parameters' + (f' (out of view without scrolling: {", ".join(seen["hidden"])})' if seen['hidden'] else '')
        + ':')
  print('  ' + ' | '.join(seen['header']))
  for row in seen['rows']:
    print('  ' + ' | '.join(row))
  print(f'screenshots: {os.path.join(out, "scalars.png")}, {os.path.join(out, "hyper_parameters.png")}')
  for problem in problems:
    print(f'problem: {problem}', file=sys.stderr)
  sys.exit(1 if problems else 0)


if __name__ == '__main__':
  main()
