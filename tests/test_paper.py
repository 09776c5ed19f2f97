"""vgg_jax.paper holds docs/paper.md's numbers, and Scale reads and writes every
spelling of S."""

import os
import re

import pytest

from vgg_jax import config as config_lib
from vgg_jax import evaluate, paper
from vgg_jax.scale import Scale

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "paper.md")
PROTOCOL = {"dense": "dense", "multi-crop": "multicrop", "multi-crop & dense": "multicrop+dense"}


@pytest.fixture(scope="module")
def doc() -> str:
  with open(DOC) as f:
    return f.read()


def doc_table(doc: str, title: str) -> list[list[str]]:
  """The body rows of the Markdown table that follows the line starting `title`."""
  lines = doc[doc.index("\n" + title) :].splitlines()[1:]
  start = next(i for i, line in enumerate(lines) if line.startswith("|"))
  rows = []
  for line in lines[start + 2 :]:
    if not line.startswith("|"):
      break
    rows.append([cell.strip() for cell in line.strip("|").split("|")])
  return rows


@pytest.mark.parametrize(
  "text, scale, name, shown",
  [
    ("256", Scale(256, 256), "256", "256"),
    ("256-512", Scale(256, 512), "256-512", "[256,512]"),
    ("[32,48]", Scale(32, 48), "32-48", "[32,48]"),
    (" [32, 48] ", Scale(32, 48), "32-48", "[32,48]"),
  ],
)
def test_scale_reads_and_writes_each_spelling(text, scale, name, shown):
  parsed = Scale.parse(text)
  assert parsed == scale and (parsed.name, str(parsed)) == (name, shown)
  assert Scale.parse(parsed.name) == Scale.parse(str(parsed)) == parsed


def test_scale_of_a_config_pair_an_int_or_a_scale():
  assert Scale.of((32, 48)) == Scale.of([32, 48]) == Scale.of("32-48") == Scale(32, 48)
  assert Scale.of(40) == Scale(40, 40) and Scale.of(paper.S384) is paper.S384
  lo, hi = Scale(32, 48)
  assert (lo, hi) == tuple(Scale(32, 48)) == (32, 48)
  assert {Scale(32, 32): 1}[Scale.parse("32")] == 1  # hashable: a dict key


def test_scale_fixed_and_mid():
  assert paper.S256.fixed and not paper.S256_512.fixed
  assert (paper.S256.mid, paper.S384.mid, paper.S256_512.mid) == (256, 384, 384)


@pytest.mark.parametrize("text", ["48-32", "0", "-5", "abc", "32-", "32-40-48"])
def test_scale_rejects_what_is_not_a_scale(text):
  with pytest.raises(ValueError):
    Scale.parse(text)


def test_table3_matches_the_doc_with_q_the_middle_of_s(doc):
  rows = doc_table(doc, "Table 3, one test scale")
  assert [(c, Scale.parse(s)) for c, s, *_ in rows] == list(paper.TABLE3_RUNS)
  for config, s, q, top1, top5 in rows:
    assert paper.TABLE3[config, Scale.parse(s)] == (float(top1), float(top5))
    assert Scale.parse(s).mid == int(q)


def test_table4_matches_the_doc_and_its_test_scales(doc):
  rows = doc_table(doc, "Table 4, three test scales")
  assert {(c, Scale.parse(s)): (float(t1), float(t5)) for c, s, _, t1, t5 in rows} == paper.TABLE4
  for _, s, q, *_ in rows:
    assert paper.TABLE4_Q[Scale.parse(s)] == tuple(map(int, q.split(",")))


def test_table4_q_is_what_evaluation_uses_at_crop_224():
  c = config_lib.base_config()
  c.data.crop = 224
  for s, q in paper.TABLE4_Q.items():
    c.data.scale = tuple(s)
    assert evaluate.resolve_scales("table4", c) == q


def test_table5_and_table6_match_the_doc(doc):
  rows = doc_table(doc, "Table 5, S in [256, 512]")
  assert {(c, PROTOCOL[p]): (float(t1), float(t5)) for c, p, t1, t5 in rows} == paper.TABLE5
  text = " ".join(doc[doc.index("Table 6, ensembles") :].split("\n\n")[0].split())
  for protocol, numbers in paper.TABLE6.items():
    name = next(k for k, v in PROTOCOL.items() if v == protocol)
    assert f"{name} {numbers[0]} / {numbers[1]} /" in text
  assert "D and E, both [256, 512]" in text
  assert paper.TABLE6_MEMBERS == (("D", paper.S256_512), ("E", paper.S256_512))


def test_parameters_and_multiply_adds_match_the_doc(doc):
  millions = re.search(r"Table 2 rounds to millions: ([\d, ]+)\)", doc).group(1)
  assert [int(m) for m in millions.split(",")] == list(paper.PARAMS_MILLIONS.values())
  exact = " ".join(doc[doc.index("Counted exactly:") :].split("(A, B,")[0].split())
  counts = {
    config: int(count.replace(",", ""))
    for config, count in re.findall(r"([A-E](?:-LRN)?) ([\d,]{11})", exact)
  }
  assert "A and A-LRN" in exact and {"A": counts["A-LRN"], **counts} == paper.EXACT_PARAMS
  for config, gmacs in paper.GMACS_224.items():
    assert f"{config} {gmacs:.3f} G" in doc


def test_stand_ins_keep_the_regimes_kind_and_order():
  for dataset, scales in paper.STAND_INS.items():
    assert tuple(scales) == paper.REGIMES, dataset
    ours = list(scales.values())
    assert [s.fixed for s in ours] == [s.fixed for s in paper.REGIMES]
    assert ours[0].lo < ours[1].lo and (ours[2].lo, ours[2].mid) == (ours[0].lo, ours[1].lo)
  assert paper.regime("fashion_mnist", Scale(64, 96)) == paper.S256_512  # the "@64" set
  assert paper.regime("fashion_mnist", Scale(40, 40)) == paper.S384
  assert paper.regime("cifar10", Scale(40, 40)) == Scale(40, 40)  # no stand-in: itself


def test_claims_compare_sides_the_paper_has_numbers_for():
  from vgg_jax import report  # pylint: disable=import-outside-toplevel

  claims = paper.claims()
  assert len({name for name, _, _ in claims}) == len(claims)
  for name, base, other in claims:
    assert None not in (report.paper_top1(base), report.paper_top1(other)), name


@pytest.mark.parametrize(
  "path", ["vgg_jax/report.py", "benchmarks/throughput.py", "benchmarks/scaling.py"]
)
def test_report_and_benchmarks_import_neither_sweep_nor_summary(path):
  import ast  # pylint: disable=import-outside-toplevel

  with open(os.path.join(os.path.dirname(DOC), "..", path)) as f:
    tree = ast.parse(f.read())
  names = {
    f"{node.module}.{alias.name}"
    for node in ast.walk(tree)
    if isinstance(node, ast.ImportFrom) and node.module
    for alias in node.names
  }
  names |= {
    alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
  }
  assert not {n for n in names if n.startswith(("vgg_jax.sweep", "vgg_jax.summary"))}
  assert "vgg_jax.util.markdown_table" in names
