"""One file per experiment, each with a get_config; base.py holds the shared defaults."""
import difflib
import glob
import os


def experiment_configs():
  """The project's config files (those with a get_config), as paths from the current folder when inside it."""
  folder = os.path.dirname(os.path.abspath(__file__))
  configs = []
  for path in sorted(glob.glob(os.path.join(folder, '[!_]*.py'))):
    with open(path) as f:
      if 'def get_config(' in f.read():
        configs.append(os.path.relpath(path) if path.startswith(os.getcwd() + os.sep) else path)
  return configs


def missing_config(path):
  """The message for a config file that does not exist: the nearest of the project's configs, and all of them."""
  configs = experiment_configs()
  guess = difflib.get_close_matches(path, configs, n=1)
  return (f'config file {os.path.abspath(path)} does not exist; ' + (f'did you mean {guess[0]}? ' if guess else '')
          + f'the configs: {" ".join(configs)}')
