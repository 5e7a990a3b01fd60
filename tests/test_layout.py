"""The layout is the architecture: each package imports only those below it (README.md, Layout)."""
import ast
import os

from helpers import ROOT

# Each package or module of the project, and the ones of the project it may import.
BELOW = {
    'utils': set(),
    'kernels': {'utils'},
    'configs': {'utils'},
    'data': {'utils'},
    'models': {'kernels', 'utils'},
    'rdrop': set(),
}


def project_imports(name):
  """{top-level package or module of the project that `name` (a package or module) imports}."""
  ours = {entry.removesuffix('.py') for entry in os.listdir(ROOT) if not entry.startswith('.')}
  path = os.path.join(ROOT, name)
  files = ([os.path.join(folder, f) for folder, _, names in os.walk(path) for f in names if f.endswith('.py')]
           if os.path.isdir(path) else [path + '.py'])
  imported = set()
  for file in files:
    for node in ast.walk(ast.parse(open(file).read(), file)):
      if isinstance(node, ast.Import):
        imported.update(alias.name.split('.')[0] for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        imported.add(node.module.split('.')[0])
  return (imported & ours) - {name}


def test_each_package_imports_only_those_below_it():
  upward = {name: sorted(project_imports(name) - allowed) for name, allowed in BELOW.items()}
  assert not {name: above for name, above in upward.items() if above}, 'imports against the layout'
