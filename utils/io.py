"""Files that readers may open at any moment: written whole or not at all, appended by lines."""
import contextlib
import json
import os


@contextlib.contextmanager
def naming(path):
  """An OSError raised in the block names `path`: a full disk fails a write, a flush or a close, and then
  Python names no file."""
  try:
    yield
  except OSError as err:
    if err.filename:
      raise
    raise OSError(err.errno, err.strerror or str(err), str(path)) from err


def write_atomic(path, text):
  """Write `text` to `path` through a temporary file, fsynced, and a rename: readers never see half a
  file, and a crash leaves the old or the new one."""
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with naming(path), open(tmp, 'w', newline='') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def read_json(path):
  """The JSON document in `path`; one that does not parse is an error naming the file."""
  with open(path) as f:
    text = f.read()
  try:
    return json.loads(text)
  except ValueError as err:
    raise ValueError(f'{path} is not valid JSON ({err}): restore it or remove the run') from err


def append_line(path, line):
  """Append one line (a reader may find the last line cut by a kill: read_jsonl skips it)."""
  with naming(path), open(path, 'a') as f:
    f.write(line + '\n')


def read_jsonl(path):
  """(rows of a JSON-lines file, whether its last line was cut off); a bad line elsewhere is an error.

  A process killed while appending leaves a partial last line: that line is not a record.
  """
  if not os.path.exists(path):
    return [], False
  with open(path) as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  rows = []
  for number, line in enumerate(lines, 1):
    try:
      rows.append(json.loads(line))
    except ValueError as err:
      if number == len(lines):
        return rows, True
      raise ValueError(f'{path}, line {number}: not a JSON record ({err}); fix or remove that line') from err
  return rows, False
