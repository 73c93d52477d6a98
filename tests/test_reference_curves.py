"""experiments/reference_curves.py reads both codes' curves and tabulates them per step."""

import json

from experiments import reference_curves


def test_reads_both_codes_and_writes_table_and_plot(tmp_path):
  for seed, accs in ((0, (0.2, 0.5)), (1, (0.4, 0.7))):
    with open(tmp_path / f"authors{seed}.jsonl", "w") as f:
      for step, acc in zip((500, 1000), accs):
        f.write(json.dumps({"seed": seed, "step": step, "valid_probe_acc": acc,
                            "recon": 1.0 - acc}) + "\n")
  ours = tmp_path / "ours"
  ours.mkdir()
  (ours / "config.json").write_text(json.dumps({"seed": 0, "num_seeds": 2}))
  records = [{"step": 250, "recon": 0.7, "recon_per_seed": [0.8, 0.6]},
             {"step": 500, "recon": 0.5, "recon_per_seed": [0.6, 0.4], "valid_probe_acc": 0.3,
              "valid_probe_acc_per_seed": [0.1, 0.5]}]
  (ours / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

  variant = tmp_path / "variant"
  variant.mkdir()
  (variant / "config.json").write_text(json.dumps({"seed": 3}))
  (variant / "metrics.jsonl").write_text(json.dumps(
      {"step": 500, "recon": 0.25, "valid_probe_acc": 0.9}) + "\n")

  out = tmp_path / "curves"
  label, dirs = reference_curves.parse_variant(f"amr_jax ,authors={variant}")
  reference_curves.write(str(tmp_path / "authors*.jsonl"), [str(ours)], str(out), {label: dirs})
  data = json.loads((tmp_path / "curves_data.json").read_text())
  assert data["authors' code"]["valid_probe_acc"] == {"0": {"500": 0.2, "1000": 0.5},
                                                "1": {"500": 0.4, "1000": 0.7}}
  assert data["amr_jax"]["valid_probe_acc"] == {"0": {"500": 0.1}, "1": {"500": 0.5}}
  # Our reconstruction at an evaluation: the mean of the window's records, per seed.
  assert data["amr_jax"]["recon"] == {"0": {"500": 0.7}, "1": {"500": 0.5}}
  table = (tmp_path / "curves_table.md").read_text()
  assert data["amr_jax ,authors"]["recon"] == {"3": {"500": 0.25}}
  assert ("| 500 | 0.300 ± 0.141 (n=2) | 0.200, 0.400 | 0.300 ± 0.283 (n=2) | 0.100, 0.500 "
          "| 0.900 (n=1) | 0.900 |") in table
  assert "| 1000 | 0.600 ± 0.141 (n=2) | 0.500, 0.700 | - | - | - | - |" in table
  assert (tmp_path / "curves.png").stat().st_size > 1000


def test_seeds_are_compared_with_a_rank_test_where_each_side_has_three(tmp_path):
  def group(values):  # {seed: {500: value}}
    return {"valid_probe_acc": {i: {500: v} for i, v in enumerate(values)},
            "recon": {i: {500: v} for i, v in enumerate(values)}}

  groups = {"authors' code": group([0.1, 0.2, 0.3, 0.4]), "amr_jax": group([0.5, 0.6, 0.7, 0.8]),
            "few": group([0.1, 0.2])}
  rows = reference_curves.tests_against_authors(groups, "recon").splitlines()
  assert rows[0] == "| step | amr_jax vs authors: p | few vs authors: p |"
  # 4 vs 4 seeds, fully separated: the exact two-sided p is 2 / C(8, 4) = 0.029.
  assert rows[2] == "| 500 | 0.029 (4 vs 4) | - |"
