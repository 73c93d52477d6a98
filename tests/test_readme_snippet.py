"""The manifold-mixup example runs and learns, and README.md shows exactly its snippet."""

import pathlib
import re
import runpy

import jax

jax.config.update("jax_disable_most_optimizations", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "manifold_mixup.py"
README = ROOT / "README.md"
SECTION = "Using the mixers in your own code"
START, END = "# [START snippet]", "# [END snippet]"


def snippet() -> str:
  """The example's lines strictly between the markers, without surrounding blank lines."""
  lines = EXAMPLE.read_text().splitlines()
  starts = [i for i, line in enumerate(lines) if line.strip() == START]
  ends = [i for i, line in enumerate(lines) if line.strip() == END]
  assert len(starts) == 1 and len(ends) == 1 and starts[0] < ends[0], "bad snippet markers"
  return "\n".join(lines[starts[0] + 1:ends[0]]).strip("\n")


def readme_section(text: str, title: str) -> str | None:
  """The body of the Markdown section headed ``title`` (any level), or None if there is none.

  Headings inside fenced code blocks (e.g. Python comments) are not headings.
  """
  body, level, fence = None, None, None
  for line in text.splitlines():
    stripped = line.lstrip()
    marker = re.match(r"(`{3,}|~{3,})", stripped)
    if marker:
      if fence is None:
        fence = marker.group(1)
      elif stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]).strip():
        fence = None
    heading = None if fence or marker else re.match(r"(#{1,6})\s+(.*?)\s*#*\s*$", line)
    if heading:
      if body is not None and len(heading.group(1)) <= level:
        break
      if body is None and heading.group(2).strip().lower() == title.lower():
        body, level = [], len(heading.group(1))
        continue
    if body is not None:
      body.append(line)
  return None if body is None else "\n".join(body)


@pytest.fixture(autouse=True)
def _repo_on_path(monkeypatch):
  monkeypatch.syspath_prepend(str(ROOT))  # the example imports amr_jax from the repository


def test_example_trains():
  example = runpy.run_path(str(EXAMPLE), run_name="manifold_mixup_example")
  losses = np.asarray(example["main"](steps=30))
  assert losses.shape == (30,)
  assert np.all(np.isfinite(losses)), losses
  assert losses[-5:].mean() < 0.8 * losses[:5].mean(), losses


def test_snippet_is_self_contained():
  namespace = {}
  exec(compile(snippet(), "<README snippet>", "exec"), namespace)  # imports and definitions only
  assert callable(namespace["train_step"]) and callable(namespace["loss_fn"])


def test_readme_section_shows_the_snippet():
  text = README.read_text() if README.exists() else ""
  section = readme_section(text, SECTION)
  if section is None:
    pytest.skip(f"README.md has no section {SECTION!r} yet; paste the snippet of "
                f"{EXAMPLE.relative_to(ROOT)} there (between its snippet markers)")
  assert snippet() in section, (
      f"README.md section {SECTION!r} does not contain the snippet of "
      f"{EXAMPLE.relative_to(ROOT)} verbatim; paste this:\n{snippet()}")


def test_readme_section_parser():
  # The check above must find the section however it is nested, and ignore '#' lines in code.
  text = ("# Title\n## Using the mixers in your own code\nintro\n```python\n# [START snippet]\n"
          "# not a heading\nx = 1\n```\n### Sub\nmore\n## Next\nother\n")
  section = readme_section(text, SECTION)
  assert "# not a heading\nx = 1" in section and "more" in section and "other" not in section
  assert readme_section("# Title\ntext\n", SECTION) is None
