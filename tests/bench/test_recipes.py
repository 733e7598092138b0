"""bench/recipes.py's store: each recipe's seed an MLflow run, read back as the tables read it, the old JSON
results imported once, and only scores on the 14,000-row leaderboard compared."""

import importlib.util
import json

import pytest

from tests.conftest import ROOT


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("recipes", ROOT / "bench" / "recipes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "STORE", f"sqlite:///{tmp_path / 'recipes.db'}")
    return module


def test_a_recipes_run_reads_back_with_its_scores_and_learning_curve(recipes):
    result = {
        "description": "Deotte's own recipe",
        "settings": {"epochs": 45, "affine": {"shear_degrees": 0}},
        "train_seconds": 3342,
        "epochs_run": [45],
        "images_seen": 1701000,
        "validation_accuracy": 0.9971,
        "submission": "runs/recipes/deotte_recipe_45/seed-42/submission.csv",
    }
    run_id = recipes.record("deotte_recipe_45", 42, result)
    recipes.add_figures(run_id, {"leaderboard": 0.9953, "leaderboard_rows": 14000}, {15: 0.9934, 45: 0.9953})
    read = recipes.load_results()["deotte_recipe_45"]["42"]
    assert read["run_id"] == run_id and read["epochs_run"] == [45] and read["submission"] == result["submission"]
    assert read["leaderboard"] == 0.9953 and read["curve"] == {"15": 0.9934, "45": 0.9953}
    client = recipes.tracking_client()
    (run,) = client.search_runs([client.get_experiment_by_name(recipes.EXPERIMENT).experiment_id])
    assert run.data.params == {"epochs": "45", "affine": '{"shear_degrees": 0}', "seed": "42"}
    assert run.info.run_name == "deotte_recipe_45/42" and run.info.status == "FINISHED"
    (row,) = recipes.summary(recipes.load_results())
    assert row["mean"] == 0.9953 and row["seeds"] == 1 and row["images"] == 1701000


def test_the_old_json_results_are_imported_once_and_their_7000_row_scores_kept_apart(recipes, tmp_path, capsys):
    old = {
        "default": {
            "42": {
                "description": "the default",
                "train_seconds": 1100,
                "epochs_run": [15],
                "images_seen": 567000,
                "validation_accuracy": 0.998,
                "leaderboard": 0.9954,
                "submission": "runs/recipes/default/seed-42/submission.csv",
            }
        },
        "pair": {
            "combined": {
                "description": "default/42 + default/43",
                "members": ["default/42", "default/43"],
                "tta": False,
                "train_seconds": 2200,
                "images_seen": 1134000,
                "submission": "runs/recipes/combinations/pair/submission.csv",
            }
        },
    }
    path = tmp_path / "recipes.json"
    path.write_text(json.dumps(old))
    recipes.import_results(path)
    recipes.import_results(path)  # nothing twice
    assert capsys.readouterr().out.splitlines() == ["imported default/42", "imported pair/combined"]
    results = recipes.load_results()
    assert results["default"]["42"]["leaderboard"] == 0.9954 and results["default"]["42"]["leaderboard_rows"] == 7000
    assert results["pair"]["combined"]["members"] == ["default/42", "default/43"]
    assert recipes.summary(results) == []  # no score on the 14,000-row leaderboard yet
