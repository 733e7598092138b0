import os

from runner.outputs import listing, point_latest_at


def test_latest_link_points_at_the_newest_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("20260101-000000", "20260102-000000"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        point_latest_at(tmp_path / "runs" / name)
        assert os.readlink(tmp_path / "runs" / "latest") == name
    point_latest_at(tmp_path / "elsewhere")  # outside runs/: latest is left alone
    assert os.readlink(tmp_path / "runs" / "latest") == "20260102-000000"


def test_the_listing_says_what_each_file_is(tmp_path):
    for name in ("submission.csv", "model-1.keras", "notes.txt"):
        (tmp_path / name).touch()
    assert listing(tmp_path) == [
        f"  {tmp_path / 'model-1.keras'}  a trained Keras model (one per member of the ensemble)",
        f"  {tmp_path / 'notes.txt'}  ",
        f"  {tmp_path / 'submission.csv'}  Kaggle's submission (make kaggle-submit sends it)",
    ]
