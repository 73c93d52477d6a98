"""The dSprites configs train, report the disentanglement metrics and draw the attribute mixes."""

import json
import os

from amr_jax import train
from experiments.configs import tiny_dsprites


def test_supervised_dsprites_run_reports_metrics_and_attribute_pictures(tmp_path):
  config = tiny_dsprites.get_config("supervised")
  state, summary = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 2 and "mixer" in state.generator
  (record,) = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  for name in ("factor_vae_accuracy", "beta_vae_accuracy", "authors_factor_vae_accuracy",
               "cls_sup", "gan_sup", "d_cls_real", "mask", "valid_probe_acc"):
    assert name in record, name
  assert 0.0 <= record["authors_factor_vae_accuracy"] <= 0.8
  assert "step_0000002_attribute_mixes.png" in os.listdir(tmp_path / "images")
  assert summary["best_step"] == 2
