"""``dim-ssl compare``: its configuration, and a tiny comparison through the real command line."""

from __future__ import annotations

import csv
import json
from operator import itemgetter

import numpy as np
import pytest
import pytorch_lightning as pl
import yaml
from pretrain_helpers import QUICKSTART, copy_finished_run, run_cli

from eval.errors import ConfigError
from eval.experiments.compare import DEFAULT_METHODS, resolve_comparison
from eval.training.config import resolve_config

ALL_ROWS = {"DIM(L)", "DIM(G)", "SimCLR", "MoCo", "random init", "raw pixels"}

# The quickstart comparison, shrunk: timm's tiny test_resnet, 96 training and 64 held-out
# images, one epoch per method, a smaller kNN (96 images cannot feed 200 neighbours).
TINY_COMPARE = [
    "encoder.name=test_resnet",
    "data.limit_train=96",
    "data.limit_val=64",
    "data.batch_size=32",
    "trainer.enable_progress_bar=false",
    "compare.budget.seconds=null",
    "compare.budget.epochs=1",
    "compare.knn_k=10",
    "compare.curve.limit_train=64",
    "compare.curve.knn_k=5",
]


def write_config(path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ---- configuration ---------------------------------------------------------------------


def test_without_a_compare_section_the_default_four_methods_are_compared(tmp_path):
    config = write_config(tmp_path / "plain.yaml", "name: plain\nencoder: {name: test_resnet}\n")
    comparison = resolve_comparison(config)
    assert [m.label for m in comparison.methods] == [m["label"] for m in DEFAULT_METHODS]
    names = [c["method"]["name"] for c in comparison.configs]
    assert names == ["dim", "dim", "simclr", "moco"]
    heads = [c["method"]["head"] for c in comparison.configs[:2]]
    assert (heads[0]["alpha"], heads[0]["beta"], heads[0]["gamma"]) == (0.0, 1.0, 0.1)  # DIM(L)
    assert (heads[1]["alpha"], heads[1]["beta"], heads[1]["gamma"]) == (1.0, 0.0, 1.0)  # DIM(G)
    assert comparison.out.as_posix() == "runs/plain-compare"
    assert [c["output_dir"] for c in comparison.configs][0] == "runs/plain-compare/dim-l"
    # Every method shares the backbone and the data.
    assert {c["encoder"]["name"] for c in comparison.configs} == {"test_resnet"}


def test_only_keeps_the_named_methods_and_names_unknown_labels(tmp_path):
    config = write_config(tmp_path / "plain.yaml", "name: plain\nencoder: {name: test_resnet}\n")
    comparison = resolve_comparison(config, only=["MoCo", "DIM(L)"])
    assert [m.label for m in comparison.methods] == ["DIM(L)", "MoCo"]  # the configuration's order
    assert [c["method"]["name"] for c in comparison.configs] == ["dim", "moco"]
    with pytest.raises(ConfigError, match="no method labelled 'BYOL'.*'SimCLR'"):
        resolve_comparison(config, only=["BYOL"])


def test_the_recipe_search_reads_only_the_training_split():
    comparison = resolve_comparison("configs/search_fmnist.yaml")
    assert comparison.base["data"]["holdout"] == 10_000
    assert all(c["data"]["holdout"] == 10_000 for c in comparison.configs)
    assert {c["method"]["name"] for c in comparison.configs} == {"dim"}


def test_the_race_recipe_search_gives_every_method_four_candidates_on_the_validation_split():
    from collections import Counter

    comparison = resolve_comparison("configs/search_race_fmnist.yaml")
    kinds = Counter(
        (c["method"]["name"], c["method"].get("head", {}).get("alpha") if c["method"]["name"] == "dim" else None)
        for c in comparison.configs
    )
    # DIM(L) (alpha 0), DIM(G) (alpha 1), MV-DIM, SimCLR, MoCo, BYOL, SimCLR+DIM: four each
    assert len(kinds) == 7 and set(kinds.values()) == {4}
    assert all(c["data"]["holdout"] == 10_000 for c in comparison.configs)
    assert {c["trainer"]["max_time_s"] for c in comparison.configs} == {180.0}
    recipes = [{k: v for k, v in c.items() if k not in ("name", "output_dir")} for c in comparison.configs]
    assert len({json.dumps(r, sort_keys=True, default=str) for r in recipes}) == 28  # no candidate twice


# The race's methods and the search candidates they were chosen from (docs/evaluation.md).
RACE_RECIPES = {
    "DIM(L)": "DIM(L)-jsd-none",
    "DIM(G)": "DIM(G)-jsd-none",
    "MV-DIM": "MV-DIM-infonce-1e-4",
    "SimCLR+DIM": "SimCLR+DIM-0.06-0.08",
    "SimCLR": "SimCLR-0.06-0.4",
    "MoCo": "MoCo-0.06-0.2",
    "BYOL": "BYOL-0.06-0.4",
}


def test_the_race_trains_each_method_with_the_recipe_its_search_chose():
    race = resolve_comparison("configs/compare_fmnist.yaml")
    search = resolve_comparison("configs/search_race_fmnist.yaml")
    chosen = dict(zip([m.label for m in search.methods], search.configs))
    assert [m.label for m in race.methods] == list(RACE_RECIPES)
    for entry, config in zip(race.methods, race.configs):
        candidate = chosen[RACE_RECIPES[entry.label]]
        for section in ("method", "optimizer", "encoder"):
            assert config[section] == candidate[section], (entry.label, section)
        # The same data and transform; only the split (all 60,000 vs 50,000 + validation) differs.
        assert {k: v for k, v in config["data"].items() if k != "holdout"} == {
            k: v for k, v in candidate["data"].items() if k != "holdout"
        }
        assert config["data"]["holdout"] is None and candidate["data"]["holdout"] == 10_000
    assert race.seeds == [0, 1, 2]


def test_the_digits_transfer_pretrains_each_method_with_the_race_recipe():
    # configs/transfer_paper_digits.yaml repeats the race's method list (a config cannot include
    # another); this keeps the copy from drifting.
    from eval.experiments.transfer import resolve_transfer

    race = resolve_comparison("configs/compare_fmnist.yaml")
    transfer = resolve_transfer("configs/transfer_paper_digits.yaml")
    assert [label for label, _, _ in transfer.runs] == [m.label for m in race.methods]
    for (label, source, config), recipe in zip(transfer.runs, race.configs):
        assert source == "digits"
        for section in ("method", "optimizer", "encoder"):
            assert config[section] == recipe[section], (label, section)
        assert (config["data"]["crop"], config["data"]["flip"]) == (recipe["data"]["crop"], recipe["data"]["flip"])


def test_the_full_protocol_probe_reads_every_race_model_on_all_of_fashion_mnist():
    # Read as plain YAML: resolving checks that the checkpoints exist, and CI has no race runs.
    race = resolve_comparison("configs/compare_fmnist.yaml")
    full = yaml.safe_load(open("configs/probe_race_full.yaml"))["transfer"]
    digits = yaml.safe_load(open("configs/transfer_paper.yaml"))["transfer"]
    assert sorted(full["checkpoints"]) == sorted(m.label for m in race.methods)
    assert full["checkpoints"] == digits["checkpoints"]  # the same models as the digits transfer
    for paths in full["checkpoints"].values():
        assert [p.split("/")[-3] for p in paths] == [f"seed-{s}" for s in race.seeds]
    assert full["targets"] == ["fashion-mnist"]  # no limit_train: all 60,000 training images
    assert full["positions"] == ["pool"] and full["random_init"] and full["raw_pixels"]
    # The linear probe on 60,000 images runs on seed 0 of the two leaders: the same files.
    linear = yaml.safe_load(open("configs/probe_race_full_linear.yaml"))
    assert linear["seed"] == 0 and linear["transfer"]["targets"] == ["fashion-mnist"]
    for label, paths in linear["transfer"]["checkpoints"].items():
        assert paths == full["checkpoints"][label][:1]


def test_quickstart_serves_both_pretrain_and_compare():
    config = resolve_config(QUICKSTART)  # what `dim-ssl pretrain configs/quickstart.yaml` resolves
    assert "compare" not in config and config["method"]["name"] == "dim"
    comparison = resolve_comparison(QUICKSTART)
    assert [m.label for m in comparison.methods] == ["DIM(L)", "DIM(G)", "SimCLR", "MoCo"]
    assert comparison.methods[0].positions == ("pool", "conv")
    seconds = comparison.section["budget"]["seconds"]
    assert all(c["trainer"]["max_time_s"] == seconds for c in comparison.configs)


def test_a_method_switch_drops_the_other_methods_keys_and_nested_overrides_equal_dotted(tmp_path):
    config = write_config(
        tmp_path / "c.yaml",
        """
name: c
method: {name: dim, head: {alpha: 0.5}}
compare:
  methods:
    - {label: dotted, overrides: {method.head.alpha: 0.25, data.batch_size: 16}}
    - {label: nested, overrides: {method: {head: {alpha: 0.25}}, data: {batch_size: 16}}}
    - {label: contrastive, overrides: {method.name: simclr, method.temperature: 0.2}}
  budget: {epochs: 3}
""",
    )
    # One comparison refuses two labels that train the same model, so each twin resolves alone.
    (dotted,) = resolve_comparison(config, only=["dotted"]).configs
    nested, contrastive = resolve_comparison(config, only=["nested", "contrastive"]).configs
    for key in ("method", "data", "trainer", "encoder", "optimizer"):
        assert dotted[key] == nested[key], key
    assert dotted["method"]["head"]["alpha"] == 0.25 and dotted["data"]["batch_size"] == 16
    assert contrastive["method"]["name"] == "simclr" and contrastive["method"]["temperature"] == 0.2
    assert "head" not in contrastive["method"]
    assert dotted["trainer"]["max_epochs"] == 3 and dotted["trainer"]["max_time_s"] is None


def test_a_wall_clock_budget_sets_lightnings_max_time_and_an_epoch_cap(tmp_path):
    config = write_config(tmp_path / "c.yaml", "compare: {budget: {seconds: 12}}\n")
    for resolved in resolve_comparison(config).configs:
        assert resolved["trainer"]["max_time_s"] == 12.0 and resolved["trainer"]["max_epochs"] == 1000


@pytest.mark.parametrize(
    "section, message",
    [
        ("{budgt: {epochs: 1}}", "did you mean 'compare.budget'"),
        ("{budget: {epochs: 0}}", "compare.budget.epochs must be a whole number >= 1"),
        ("{budget: {seconds: -5}}", "compare.budget.seconds must be a positive number"),
        ("{probes: [knn, svm]}", "probes must be one or more of knn, linear, mlp"),
        ("{methods: [{label: A}, {label: a}]}", "name the same output folder"),
        ("{methods: [{overrides: {method.name: dim}}]}", "needs a label"),
        (
            "{methods: [{label: X, overrides: {optimizer.lrr: 1}}]}",
            "compare.methods[0] (X): unknown config key 'optimizer.lrr'",
        ),
        ("{methods: [{label: X, overrides: {method.name: nonesuch}}]}", "unknown method.name 'nonesuch'"),
    ],
)
def test_configuration_mistakes_are_named(tmp_path, section, message):
    config = write_config(tmp_path / "c.yaml", f"compare: {section}\n")
    with pytest.raises(ConfigError, match=None) as caught:
        resolve_comparison(config)
    assert message in str(caught.value)


# ---- a tiny comparison through the command line ----------------------------------------


@pytest.fixture(scope="module")
def tiny_comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "run"
    result = run_cli(["compare", QUICKSTART, *TINY_COMPARE, f"output_dir={out}"], timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


def test_compare_writes_every_row_and_every_file(tiny_comparison):
    out, result = tiny_comparison
    rows = json.loads((out / "comparison.json").read_text())
    assert {row["method"] for row in rows} == ALL_ROWS
    positions = {(row["method"], row["position"]) for row in rows}
    assert ("DIM(L)", "conv") in positions and ("DIM(G)", "conv") not in positions  # as configured
    assert ("random init", "conv") in positions and ("raw pixels", "pixels") in positions
    for row in rows:
        assert 0.0 <= row["knn_acc"] <= 1.0 and 0.0 <= row["linear_acc"] <= 1.0, row
    trained = [row for row in rows if row["method"] in ("DIM(L)", "DIM(G)", "SimCLR", "MoCo")]
    assert all(row["images_per_s"] > 0 and row["wall_clock_s"] > 0 and row["epochs"] == 1 for row in trained)

    with open(out / "comparison.csv", newline="") as file:
        table = list(csv.DictReader(file))
    assert [r["method"] for r in table] == [r["method"] for r in rows]
    assert float(table[0]["knn_acc"]) == pytest.approx(rows[0]["knn_acc"])
    assert "| method | position | knn_acc | linear_acc |" in (out / "comparison.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert set(results["curves"]) == {"DIM(L)", "DIM(G)", "SimCLR", "MoCo"}
    with open(out / "curves.csv", newline="") as file:
        curve = list(csv.DictReader(file))
    assert {r["method"] for r in curve} == {"DIM(L)", "DIM(G)", "SimCLR", "MoCo"}
    assert all(float(r["seconds"]) >= 0 for r in curve)
    # Every method starts from the same weights (the random-init encoder): one step-0 accuracy.
    assert len({r["knn_acc"] for r in curve if r["step"] == "0"}) == 1
    for png in ("accuracy_vs_time.png", "embeddings.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["compare"]["budget"] == {"epochs": 1, "seconds": None}
    for folder in ("dim-l", "dim-g", "simclr", "moco"):
        for name in (
            "config.yaml",
            "metrics.csv",
            "summary.json",
            "training.json",
            "knn_vs_time.png",
            "checkpoints/last.ckpt",
        ):
            assert (out / folder / name).is_file(), f"{folder}/{name}"
    # Progress and the table on stdout.
    assert "[4/4] MoCo" in result.stdout and "| raw pixels | pixels |" in result.stdout
    assert f"plots: {out / 'accuracy_vs_time.png'}  {out / 'embeddings.png'}" in result.stdout
    # Quiet: Lightning's accelerator lines, tips and step-counting notes are not shown.
    noise = ("GPU available", "TPU available", "litlogger", "Loading `train_dataloader`")
    assert not [n for n in noise if n in result.stdout + result.stderr]


def _direct_knn(train, test, k=10):
    from eval.probes.knn import knn_accuracy

    (train_x, train_y), (test_x, test_y) = train, test
    return knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=0.1)


def test_baseline_rows_are_their_own_numbers(tiny_comparison):
    from eval.methods.registry import build_encoder
    from eval.probes.suite import model_features, pixel_features, probe_data
    from eval.training.checkpoint import model_from_checkpoint

    out, _ = tiny_comparison
    rows = {(r["method"], r["position"]): r for r in json.loads((out / "comparison.json").read_text())}
    data = probe_data("digits", 32, 1, limit_train=96, limit_test=64)

    # Raw pixels: kNN on the flattened, normalised inputs, computed here from scratch.
    pixels = rows[("raw pixels", "pixels")]
    train, test = pixel_features(data, progress=False)
    assert train[0].shape == (96, 1024)
    assert pixels["knn_acc"] == _direct_knn(train, test)

    # Random init: the encoder as the seed builds it, before any training.
    pl.seed_everything(0, verbose=False)
    encoder = build_encoder(
        {"name": "test_resnet", "global_dim": 64, "hidden_dim": 1024, "feature_stage": None, "kwargs": {}},
        channels=1,
        image_size=32,
    )
    init = model_features(encoder, data, ("pool",), progress=False)["pool"]
    assert rows[("random init", "pool")]["knn_acc"] == _direct_knn(*init)

    # A trained method: its own checkpoint's features, which are not the untrained ones.
    model = model_from_checkpoint(out / "dim-l" / "checkpoints" / "last.ckpt")
    trained = model_features(model, data, ("pool",), progress=False)["pool"]
    assert rows[("DIM(L)", "pool")]["knn_acc"] == _direct_knn(*trained)
    assert not np.allclose(trained[0][0], init[0][0])

    # Separate numbers: the baselines differ from each other and from the trained rows.
    baseline = itemgetter("knn_acc", "linear_acc")
    assert baseline(pixels) != baseline(rows[("random init", "pool")])
    for label in ("DIM(L)", "DIM(G)", "SimCLR", "MoCo"):
        assert baseline(rows[(label, "pool")]) != baseline(pixels)


def test_a_second_run_refuses_the_folder_then_reuses_the_finished_methods(tiny_comparison, probe_calls):
    out, _ = tiny_comparison
    from eval.cli import main

    assert main(["compare", QUICKSTART, *TINY_COMPARE, f"output_dir={out}"]) == 1
    before = {m: (out / m / "checkpoints" / "last.ckpt").stat().st_mtime_ns for m in ("dim-l", "moco")}
    # --reuse with one method changed: only that one trains again (MoCo's temperature).
    overrides = [*TINY_COMPARE, "compare.probes=[knn]", f"output_dir={out}"]
    comparison = resolve_comparison(QUICKSTART, overrides)
    comparison.configs[3]["method"]["temperature"] = 0.2
    from eval.experiments.compare import run_comparison

    result = run_comparison(comparison, reuse=True, echo=lambda line: None)
    after = {m: (out / m / "checkpoints" / "last.ckpt").stat().st_mtime_ns for m in ("dim-l", "moco")}
    assert after["dim-l"] == before["dim-l"] and after["moco"] != before["moco"]
    assert result["methods"]["DIM(L)"]["reused"] and not result["methods"]["MoCo"]["reused"]
    assert {row["method"] for row in result["rows"]} == ALL_ROWS
    assert all("linear_acc" not in row or row["linear_acc"] is None for row in result["rows"])

    # Continued once more, unchanged: every run reused and every probe read back from the
    # cache (a --reuse of a long race re-probes nothing), with the same numbers.
    probe_calls.clear()
    again = run_comparison(comparison, reuse=True, echo=lambda line: None)
    assert probe_calls == []
    assert all(m["reused"] for m in again["methods"].values())
    accuracies = itemgetter("method", "position", "knn_acc")
    assert sorted(map(accuracies, again["rows"])) == sorted(map(accuracies, result["rows"]))


def test_seeds_run_every_method_per_seed_and_report_mean_std_and_the_paired_gain(tmp_path):
    from eval.experiments.compare import run_comparison

    out = tmp_path / "seeds"
    overrides = [*TINY_COMPARE, "compare.probes=[knn]", "compare.seeds=[0,1]", "compare.curve.every_n_epochs=0"]
    comparison = resolve_comparison(QUICKSTART, [*overrides, f"output_dir={out}"], only=["DIM(L)"])
    assert [c["seed"] for c in comparison.seed_configs[0]] == [0, 1]
    assert comparison.seed_configs[0][1]["output_dir"] == str(out / "dim-l" / "seed-1")
    result = run_comparison(comparison, echo=lambda line: None)

    per_seed = json.loads((out / "comparison_seeds.json").read_text())
    key = {(r["method"], r["position"], r["seed"]): r for r in per_seed}
    assert set(key) == {
        (m, p, s)
        for m, p in [("DIM(L)", "pool"), ("DIM(L)", "conv"), ("random init", "pool"), ("random init", "conv")]
        for s in (0, 1)
    } | {("raw pixels", "pixels", None)}
    # Each seed builds its own untrained encoder, and each trained row is paired with its own seed's.
    assert (out / "dim-l" / "seed-0" / "checkpoints" / "last.ckpt").is_file()
    assert (out / "dim-l" / "seed-1" / "checkpoints" / "last.ckpt").is_file()
    for seed in (0, 1):
        trained, untrained = key[("DIM(L)", "pool", seed)], key[("random init", "pool", seed)]
        assert trained["knn_gain"] == pytest.approx(trained["knn_acc"] - untrained["knn_acc"])

    summary = {(r["method"], r["position"]): r for r in json.loads((out / "comparison.json").read_text())}
    dim = summary[("DIM(L)", "pool")]
    seeds = [key[("DIM(L)", "pool", s)]["knn_acc"] for s in (0, 1)]
    assert dim["seeds"] == 2 and dim["knn_acc"] == pytest.approx(np.mean(seeds))
    assert dim["knn_acc_std"] == pytest.approx(np.std(seeds, ddof=1))
    assert "±" in (out / "comparison.md").read_text() or seeds[0] == seeds[1]
    assert result["seeds"] == [0, 1] and len(result["seed_rows"]) == len(per_seed)


@pytest.mark.parametrize("seeds", ["[0,0]", "[]", "[-1]", "3"])
def test_bad_seeds_are_named(tmp_path, seeds):
    with pytest.raises(ConfigError, match="compare.seeds"):
        resolve_comparison(QUICKSTART, [f"compare.seeds={seeds}", f"output_dir={tmp_path}"])


def test_merge_joins_parts_into_the_table_one_comparison_would_write(tmp_path):
    from eval.cli import main
    from eval.experiments.compare import run_comparison
    from eval.experiments.merge import merge_comparisons

    common = [*TINY_COMPARE, "compare.probes=[knn]", "compare.seeds=[0,1]", "compare.curve.every_n_epochs=0"]
    whole, part_a, part_b = tmp_path / "whole", tmp_path / "a", tmp_path / "b"
    run_comparison(
        resolve_comparison(QUICKSTART, [*common, f"output_dir={whole}"], only=["DIM(L)", "MoCo"]), echo=lambda _: None
    )
    # The same runs as two parts; the second has no baselines of its own. The parts reuse the
    # whole's trained runs (copied), so the numbers must agree exactly.
    import shutil

    for part, label in ((part_a, "dim-l"), (part_b, "moco")):
        shutil.copytree(whole / label, part / label)
    run_comparison(
        resolve_comparison(QUICKSTART, [*common, f"output_dir={part_a}"], only=["DIM(L)"]),
        reuse=True,
        echo=lambda _: None,
    )
    run_comparison(
        resolve_comparison(
            QUICKSTART,
            [*common, f"output_dir={part_b}", "compare.random_init=false", "compare.raw_pixels=false"],
            only=["MoCo"],
        ),
        reuse=True,
        echo=lambda _: None,
    )
    result = merge_comparisons(tmp_path / "merged", [part_a, part_b], echo=lambda _: None)

    def table(folder, stem="comparison"):
        rows = json.loads((folder / f"{stem}.json").read_text())
        return {(r["method"], r["position"], r.get("seed")): r for r in rows}

    expected, merged = table(whole), table(tmp_path / "merged")
    assert list(merged) == list(expected)  # the same rows in the same order: trained methods, then baselines
    for key, row in expected.items():
        for column in ("knn_acc", "knn_acc_std", "knn_gain", "knn_gain_std", "seeds"):
            assert merged[key].get(column) == pytest.approx(row.get(column)), (key, column)
    # MoCo's gain comes from the untrained rows part a probed.
    assert merged[("MoCo", "pool", None)]["knn_gain"] is not None
    assert set(table(tmp_path / "merged", "comparison_seeds")) == set(table(whole, "comparison_seeds"))
    assert result["merged_from"] == [str(part_a), str(part_b)]

    # Parts that cannot share a table are refused with a reason, through the command line.
    assert main(["merge", str(tmp_path / "bad"), str(part_a), str(part_a)]) == 2
    assert main(["merge", str(tmp_path / "bad"), str(part_a), str(tmp_path / "nothing")]) == 2


def test_merge_joins_parts_that_split_the_seeds(tmp_path):
    # seed 0 in one process, seed 1 in another, of the same methods: one table over both seeds.
    import shutil

    from eval.cli import main
    from eval.experiments.compare import run_comparison
    from eval.experiments.merge import merge_comparisons

    common = [*TINY_COMPARE, "compare.probes=[knn]", "compare.curve.every_n_epochs=0"]
    whole = tmp_path / "whole"
    run_comparison(
        resolve_comparison(
            QUICKSTART, [*common, "compare.seeds=[0,1]", f"output_dir={whole}"], only=["DIM(L)", "MoCo"]
        ),
        echo=lambda _: None,
    )
    # The parts reuse the whole's trained runs (copied where a one-seed comparison keeps them).
    parts = {0: tmp_path / "seed0", 1: tmp_path / "seed1"}
    lines: list[str] = []
    for seed, part in parts.items():
        for label in ("dim-l", "moco"):
            copy_finished_run(whole / label / f"seed-{seed}", part / label)
        baselines = [] if seed == 0 else ["compare.raw_pixels=false"]  # the pixels do not depend on the seed
        run_comparison(
            resolve_comparison(
                QUICKSTART,
                [*common, f"compare.seeds=[{seed}]", f"output_dir={part}", *baselines],
                only=["DIM(L)", "MoCo"],
            ),
            reuse=True,
            echo=lines.append,
        )
    assert sum("reusing the finished run" in line for line in lines) == 4, "\n".join(lines)
    result = merge_comparisons(tmp_path / "merged", [parts[0], parts[1]], echo=lambda _: None)

    def table(folder, stem="comparison"):
        rows = json.loads((folder / f"{stem}.json").read_text())
        return {(r["method"], r["position"], r.get("seed")): r for r in rows}

    expected, merged = table(whole), table(tmp_path / "merged")
    assert list(merged) == list(expected)
    for key, row in expected.items():
        for column in ("knn_acc", "knn_acc_std", "knn_gain", "knn_gain_std", "seeds"):
            assert merged[key].get(column) == pytest.approx(row.get(column)), (key, column)
    assert merged[("DIM(L)", "pool", None)]["seeds"] == 2
    assert set(table(tmp_path / "merged", "comparison_seeds")) == set(table(whole, "comparison_seeds"))
    assert result["seeds"] == [0, 1]

    # A method's seed in two parts, a method without every seed, and parts probed with other
    # settings are refused, each with its reason.
    with pytest.raises(ConfigError, match=r"'DIM\(L\)' \(seed 0\) is in both"):
        merge_comparisons(tmp_path / "bad", [parts[0], whole])
    only_dim = tmp_path / "dim-only"
    copy_finished_run(parts[1] / "dim-l", only_dim / "dim-l")
    run_comparison(
        resolve_comparison(
            QUICKSTART,
            [*common, "compare.seeds=[1]", f"output_dir={only_dim}", "compare.raw_pixels=false"],
            only=["DIM(L)"],
        ),
        reuse=True,
        echo=lambda _: None,
    )
    with pytest.raises(ConfigError, match=r"'MoCo' has seeds \[0\] but the parts together ran seeds \[0, 1\]"):
        merge_comparisons(tmp_path / "bad", [parts[0], only_dim])
    other_k = tmp_path / "other-k"
    shutil.copytree(parts[1], other_k)
    saved = yaml.safe_load((other_k / "config.yaml").read_text())
    (other_k / "config.yaml").write_text(yaml.safe_dump({**saved, "compare": {**saved["compare"], "knn_k": 7}}))
    with pytest.raises(ConfigError, match=r"probed with other settings .*\(knn_k\)"):
        merge_comparisons(tmp_path / "bad", [parts[0], other_k])
    assert main(["merge", str(tmp_path / "bad"), str(parts[0]), str(other_k)]) == 2


def test_the_curve_can_probe_by_training_time_within_an_epoch(tmp_path):
    from eval.experiments.compare import run_comparison

    out = tmp_path / "by-time"
    overrides = [*TINY_COMPARE, "compare.probes=[knn]", "compare.random_init=false", "compare.raw_pixels=false"]
    # No probe by epoch; by time, a period shorter than any batch: a point after every batch.
    overrides += ["compare.curve.every_n_epochs=0", "compare.curve.every_n_seconds=1.0e-6", f"output_dir={out}"]
    result = run_comparison(resolve_comparison(QUICKSTART, overrides, only=["DIM(L)"]), echo=lambda line: None)
    points = result["curves"]["DIM(L)"]
    assert [p["step"] for p in points] == [0, 1, 2, 3]  # 96 images in batches of 32: three steps, one epoch
    assert [p["epoch"] for p in points] == [0, 0, 0, 1]  # the last batch ends the epoch
    assert all(a["seconds"] < b["seconds"] for a, b in zip(points, points[1:]))


def test_two_labels_that_train_the_same_model_are_refused(tmp_path):
    # The trap: switching method.name starts from an empty method section, so a head override
    # that equals the new method's default leaves the two entries identical.
    config = write_config(
        tmp_path / "twins.yaml",
        """
name: twins
encoder: {name: test_resnet}
method: {name: dim, head: {estimator: infonce}}
compare:
  methods:
    - {label: MV-DIM, overrides: {method.name: mvdim}}
    - {label: MV-DIM-jsd, overrides: {method.name: mvdim, method.head.estimator: jsd}}
""",
    )
    with pytest.raises(ConfigError, match="'MV-DIM' and 'MV-DIM-jsd' resolve to the same configuration"):
        resolve_comparison(config)
