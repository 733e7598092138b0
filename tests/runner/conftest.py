import pytest

from tests.conftest import run_module

# Small enough for CI, long enough (about 2 s an epoch) to interrupt training between two epochs.
SMALL_RUN_PARAMS = ["accuracy_threshold=0", "score_shards=3", "epochs=6", "batch_size=32"]
SMALL_RUN = ["--profile", "quick", *(flag for param in SMALL_RUN_PARAMS for flag in ("--param", param))]


@pytest.fixture(scope="session")
def uninterrupted_run(tmp_path_factory, fixture_data):
    """`pipeline.py run` of the small run on the fixture: its folder and the finished process."""
    out = tmp_path_factory.mktemp("runs") / "uninterrupted"
    # The fixture's 270 training images give a poor model: the gate is opened for it.
    result = run_module("pipeline.py", "run", "--data", str(fixture_data), "--out", str(out), *SMALL_RUN)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


@pytest.fixture
def kfp_api():
    """Start a stand-in of the KFP REST API (tests/kfp_api_stand_in.py): `start(**settings)` gives it and its URL."""
    from tests.kfp_api_stand_in import StandInKfpApi
    from tests.serving.conftest import free_port

    def start(**settings):
        api = StandInKfpApi(**settings)
        port = free_port()
        stoppers.append(api.serve(port))
        return api, f"http://127.0.0.1:{port}"

    stoppers = []
    yield start
    for stop in stoppers:
        stop()
