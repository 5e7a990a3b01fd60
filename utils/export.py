"""A checkpoint as a Paddle inference model (`paddle.jit.save`), for Paddle Inference or `paddle.jit.load`.

The model is built from the config and the checkpoint's manifest alone (no dataset needed), put in eval
mode, and fused when it can be (`fuse()`, e.g. RepConv blocks into single 3x3 convs). It takes normalised
float32 images (N, C, H, W): `(pixels / 255 - mean) / std` with the mean and std recorded in
`<prefix>.preprocess.yml`, which also records the image size and the number of classes; its output is logits.
"""
import glob
import json
import os

import paddle

from train import load_trained_model


def export(config, checkpoint_path, prefix):
  """Write the inference model of `checkpoint_path` under the path prefix `prefix`; return the files written."""
  model, manifest = load_trained_model(config, checkpoint_path)
  num_classes = manifest['num_classes']
  if hasattr(model, 'fuse'):
    model = model.fuse()
    model.eval()
  channels = config.model.get('in_channels', len(config.data.mean))
  size = config.data.img_size
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  for stale in glob.glob(glob.escape(prefix) + '.*'):  # a previous export's files would look current
    os.remove(stale)
  spec = paddle.static.InputSpec([None, channels, size, size], 'float32', name='image')
  paddle.jit.save(model, prefix, input_spec=[spec])
  preprocess = {'input': 'float32 NCHW, (pixels / 255 - mean) / std', 'channels': channels, 'img_size': size,
                'mean': list(config.data.mean[:channels]), 'std': list(config.data.std[:channels]),
                'num_classes': num_classes, 'model': config.model.name, 'checkpoint': checkpoint_path}
  # YAML (each value in JSON flow style), not .json: paddle.jit.load takes any `<prefix>*.json` in the
  # folder for its program file.
  with open(prefix + '.preprocess.yml', 'w') as f:
    f.writelines(f'{key}: {json.dumps(value)}\n' for key, value in preprocess.items())
  return sorted(glob.glob(glob.escape(prefix) + '.*'))
