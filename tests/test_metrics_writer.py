"""TensorBoard event files without TensorFlow: MetricsWriter's scalars and pictures, read back by
TensorBoard's own reader, in a process where TensorFlow cannot be imported."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

WRITE_AND_READ_WITHOUT_TENSORFLOW = """
import io, json, sys
import numpy as np

class NotInstalled:
  \"\"\"TensorFlow as if it were not installed.\"\"\"
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] == "tensorflow":
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NotInstalled())
try:
  import tensorflow
  sys.exit("tensorflow was imported")
except ImportError:
  pass

from amr_jax.metrics_writer import MetricsWriter
workdir = sys.argv[1]
gray = np.arange(48, dtype=np.uint8).reshape(6, 8, 1) * 5
rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
writer = MetricsWriter(workdir)
writer.write(1, {"loss": 0.5, "steps_per_s": 3, "per_seed": [1.0, 2.0]})
writer.write_pictures(2, {"gray": gray, "rgb": rgb})
writer.write(2, {"loss": 0.25})
writer.close()

from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
events = event_accumulator.EventAccumulator(workdir + "/tensorboard",
                                            size_guidance={"scalars": 0, "images": 0})
events.Reload()
read = {"tags": {k: sorted(v) for k, v in events.Tags().items() if isinstance(v, list) and v}}
read["scalars"] = {tag: [[e.step, e.value] for e in events.Scalars(tag)]
                   for tag in events.Tags()["scalars"]}
read["pictures_match"] = {}
for tag, picture in (("gray", gray), ("rgb", rgb)):
  (image,) = events.Images(tag)
  decoded = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)))
  expected = np.repeat(picture, 3, axis=-1) if picture.shape[-1] == 1 else picture
  read["pictures_match"][tag] = [image.step, bool(np.array_equal(decoded, expected))]
read["tensorflow_loaded"] = sorted(m for m in sys.modules if m.startswith("tensorflow"))
print(json.dumps(read))
"""


def test_event_files_hold_the_scalars_and_pictures_without_tensorflow(tmp_path):
  pytest.importorskip("tensorboard")  # the reader (the `test` extra); the writer needs none
  result = subprocess.run([sys.executable, "-c", WRITE_AND_READ_WITHOUT_TENSORFLOW, str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-2000:]
  read = json.loads(result.stdout.splitlines()[-1])
  assert read["tags"] == {"images": ["gray", "rgb"], "scalars": ["loss", "steps_per_s"]}
  assert read["scalars"] == {"loss": [[1, 0.5], [2, 0.25]], "steps_per_s": [[1, 3.0]]}
  assert read["pictures_match"] == {"gray": [2, True], "rgb": [2, True]}
  assert read["tensorflow_loaded"] == []
  assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [1, 2]


def test_without_tensorboardx_the_run_goes_on_without_event_files(tmp_path, monkeypatch, caplog):
  """A core install plus ml_collections has no tensorboardX: metrics.jsonl and the PNGs are still
  written, TensorBoard is skipped with a warning naming the extra."""
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` raises
  from amr_jax.metrics_writer import MetricsWriter  # pylint: disable=g-import-not-at-top
  writer = MetricsWriter(str(tmp_path))
  writer.write(1, {"loss": 0.5})
  (png,) = writer.write_pictures(1, {"rgb": np.zeros((4, 4, 3), np.uint8)})
  writer.close()
  assert "amr_jax[train]" in caplog.text
  assert not (tmp_path / "tensorboard").exists()
  assert pathlib.Path(png).exists()
  assert json.loads(open(tmp_path / "metrics.jsonl").read()) == {"step": 1, "loss": 0.5}
