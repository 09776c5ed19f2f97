"""vgg_jax's imports form a DAG, and evaluation reaches its input through the data
interface alone: parsed from the source (every import, including those inside functions)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "vgg_jax"
BACKENDS = {
  "vgg_jax.data.numpy_backend",
  "vgg_jax.data.tfds_backend",
  "vgg_jax.data.device_backend",
}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(name: str) -> set[str]:
  """The vgg_jax modules `name` imports: `from vgg_jax.data import core` is
  vgg_jax.data.core when that is a module, else vgg_jax.data."""
  found = set()
  for node in ast.walk(ast.parse(MODULES[name].read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      found.update(
        f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
        for alias in node.names
      )
  return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imported(name) for name in MODULES}


def test_the_parser_sees_known_imports():
  assert "vgg_jax.data.core" in GRAPH["vgg_jax.data.numpy_backend"]
  assert "vgg_jax.data" in GRAPH["vgg_jax.config"]


def test_imports_form_a_dag():
  done, path = set(), []

  def visit(name):
    if name in path:
      raise AssertionError(f"import cycle: {' -> '.join(path[path.index(name) :] + [name])}")
    if name not in done:
      path.append(name)
      for other in sorted(GRAPH[name]):
        visit(other)
      path.pop()
      done.add(name)

  for name in sorted(GRAPH):
    visit(name)


def test_tensorflow_is_imported_by_the_tfds_backend_alone():
  for name, path in MODULES.items():
    tree = ast.parse(path.read_text())
    roots = {
      alias.name.split(".")[0]
      for node in ast.walk(tree)
      if isinstance(node, ast.Import)
      for alias in node.names
    }
    roots |= {
      node.module.split(".")[0]
      for node in ast.walk(tree)
      if isinstance(node, ast.ImportFrom) and node.module
    }
    if name != "vgg_jax.data.tfds_backend":
      assert not roots & {"tensorflow", "tensorflow_datasets"}, name


def test_evaluate_names_no_backend():
  assert not GRAPH["vgg_jax.evaluate"] & BACKENDS


def test_evaluate_does_not_import_train():
  assert "vgg_jax.train" not in GRAPH["vgg_jax.evaluate"]


def test_the_model_knows_no_input_pipeline():
  assert not {m for m in GRAPH["vgg_jax.model"] if m.startswith("vgg_jax.data")}
