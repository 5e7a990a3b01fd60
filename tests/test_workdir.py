"""The run folder in this process: where training starts (training/workdir.py: starting_point), its lock
(training/lock.py) and files written whole or named when they cannot be (utils/io.py)."""
import errno
import os

import pytest

from configs import digits_vit_rdrop
from training import lock, workdir
from utils import checkpoint
from utils.io import naming, write_atomic


def _config(**train):
  config = digits_vit_rdrop.get_config('smoke')
  config.train.update(train)
  return config


def _saved_run(folder, config, updates=(), total=2):
  """A workdir as training leaves it: config.json, config.py, and committed checkpoints at `updates`."""
  os.makedirs(folder)
  workdir.save_config(str(folder), config)
  for update in updates:
    checkpoint.save(workdir.checkpoints_dir(str(folder)), {}, checkpoint.Manifest(
        update=update, best={'top1': 50.0, 'update': update}, total_updates=total, config=config.to_dict()), keep=5)


def test_a_new_workdir_starts_at_update_0(tmp_path):
  assert workdir.starting_point(_config(), tmp_path / 'new', 'train') == ('', '')


def test_train_refuses_a_workdir_holding_a_run_and_resume_one_holding_none(tmp_path):
  _saved_run(tmp_path / 'run', _config())
  with pytest.raises(ValueError, match='already holds a run: continue it with --mode resume'):
    workdir.starting_point(_config(), tmp_path / 'run', 'train')
  with pytest.raises(ValueError, match='holds no run to resume'):
    workdir.starting_point(_config(), tmp_path / 'empty', 'resume')


def test_autoresume_continues_the_newest_checkpoint_and_does_nothing_once_finished(tmp_path):
  config = _config()
  _saved_run(tmp_path / 'interrupted', config, updates=[1])
  _saved_run(tmp_path / 'finished', config, updates=[1, 2])
  _saved_run(tmp_path / 'no_checkpoint', config)
  path, message = workdir.starting_point(config, tmp_path / 'interrupted', 'train', autoresume=True)
  assert path == checkpoint.folder(workdir.checkpoints_dir(str(tmp_path / 'interrupted')), 1)
  assert message == f'resume: from {path}'
  path, message = workdir.starting_point(config, tmp_path / 'finished', 'train', autoresume=True)
  assert path is None and message.endswith('finished at update 2 (best test top1 50.00% at update 2): nothing to do')
  path, message = workdir.starting_point(config, tmp_path / 'no_checkpoint', 'train', autoresume=True)
  assert path == '' and 'has no checkpoint yet: training again from update 0' in message


def test_autoresume_refuses_another_config_but_not_another_cadence_or_data_path(tmp_path):
  _saved_run(tmp_path / 'run', _config())
  cadence = _config(log_every=7, checkpoint_every=9)
  cadence.data.root = '/elsewhere'
  assert workdir.starting_point(cadence, tmp_path / 'run', 'train', autoresume=True)[0] == ''
  with pytest.raises(ValueError, match=r"config.train.lr: 0.003 in the run, 0.01 in this command"):
    workdir.starting_point(_config(lr=0.01), tmp_path / 'run', 'train', autoresume=True)


def test_a_second_owner_is_refused_naming_the_first_and_made_folders_go_when_nothing_started(tmp_path):
  target = tmp_path / 'runs' / 'new'
  with lock.own(str(target)):
    with pytest.raises(lock.WorkdirBusy, match=f'{target} is in use by another training: pid {os.getpid()} on '):
      with lock.own(str(target)):
        pass
  assert not (tmp_path / 'runs').exists()


def test_a_write_that_a_full_disk_fails_names_its_file(tmp_path):
  with pytest.raises(OSError) as failed:
    with naming(tmp_path / 'metrics.jsonl'):
      raise OSError(errno.ENOSPC, 'No space left on device')
  assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(tmp_path / 'metrics.jsonl')
  write_atomic(str(tmp_path / 'whole.txt'), 'all of it')
  assert os.listdir(tmp_path) == ['whole.txt']
