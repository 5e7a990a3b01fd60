"""A checkpoint as a Paddle inference model (`paddle.jit.save`), for Paddle Inference or `paddle.jit.load`.

The model is built from the config and the checkpoint's manifest alone (no dataset needed), put in eval
mode, and fused when it can be (`fuse()`, e.g. RepConv blocks into single 3x3 convs). It takes normalised
float32 images (N, C, H, W): `(pixels / 255 - mean) / std` with the mean and std recorded in
`<prefix>.preprocess.yml`, which also records the image size and the classes (number and names, output
order); its output is logits.
"""
import contextlib
import json
import os
import sys
import tempfile

import paddle

import models
from training import workdir as workdir_lib
from training.config_check import check_config

# Paddle logs this from C++ whenever a traced op gets the keyword `out`, even `out=None` as its own
# F.softmax passes it: noise about Paddle's internals that the exported model does not depend on.
PADDLE_TRACING_NOISE = 'Paddle static graph(PIR) not support input out tensor'
# What an export writes: paddle.jit.save's files (PIR program .json, or .pdmodel before PIR) and ours.
EXPORTED = ('.json', '.pdmodel', '.pdiparams', '.pdiparams.info', '.preprocess.yml')


def run_export(config, workdir, checkpoint_path='', output=''):
  """The export mode: the best checkpoint (or `checkpoint_path`) -> `output` prefix (default
  <workdir>/export/model)."""
  check_config(config, world_size=1)
  path = workdir_lib.checkpoint_to_read(workdir, checkpoint_path)
  print(f'export: checkpoint {path} as a Paddle inference model')
  print('written ' + ', '.join(export(config, path, output or os.path.join(workdir, 'export', 'model'))))


def export(config, checkpoint_path, prefix):
  """Write the inference model of `checkpoint_path` under the path prefix `prefix`; return the files written."""
  model, manifest = models.load_trained(config.model, checkpoint_path)
  if hasattr(model, 'fuse'):
    model = model.fuse()
    model.eval()
  channels = config.model.get('in_channels', len(config.data.mean))
  size = config.data.img_size
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  for suffix in EXPORTED:  # a previous export's files would look current; other files are the user's
    if os.path.exists(prefix + suffix):
      os.remove(prefix + suffix)
  spec = paddle.static.InputSpec([None, channels, size, size], 'float32', name='image')
  with _stderr_without(PADDLE_TRACING_NOISE):
    paddle.jit.save(model, prefix, input_spec=[spec])
  preprocess = {'input': 'float32 NCHW, (pixels / 255 - mean) / std', 'channels': channels, 'img_size': size,
                'mean': list(config.data.mean[:channels]), 'std': list(config.data.std[:channels]),
                'num_classes': manifest.num_classes, 'model': config.model.name, 'checkpoint': checkpoint_path,
                'class_names': manifest.labels}
  # YAML (each value in JSON flow style), not .json: paddle.jit.load takes any `<prefix>*.json` in the
  # folder for its program file.
  with open(prefix + '.preprocess.yml', 'w', encoding='utf-8') as f:
    f.writelines(f'{key}: {json.dumps(value, ensure_ascii=False)}\n' for key, value in preprocess.items())
  return sorted(prefix + suffix for suffix in EXPORTED if os.path.exists(prefix + suffix))


@contextlib.contextmanager
def _stderr_without(noise):
  """Pass everything written to stderr (Python's and C++'s, through file descriptor 2) except lines holding `noise`."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      sys.stderr.writelines(line for line in captured.read().decode(errors='replace').splitlines(keepends=True)
                            if noise not in line)
      sys.stderr.flush()
