"""`pipeline.py submit`: compile the pipeline and start a run of it on a Kubeflow Pipelines cluster (kfp.Client)."""

import json
import tempfile
import warnings
from pathlib import Path

import pipeline
from runner.params import parse_params


def submit(
    host: str,
    train_csv: str | None = None,
    test_csv: str | None = None,
    experiment: str = "digit-recognizer",
    run_name: str | None = None,
    params: list[str] | tuple[str, ...] = (),
    wait: bool = False,
    namespace: str | None = None,
    token: str | None = None,
    poll_seconds: float = 5,
    timeout: float = 7 * 24 * 3600,
    kaggle_secret: str | None = None,
    profile: str = "default",
    **cluster,
) -> int:
    """Compile the pipeline and start a run of it on the Kubeflow Pipelines at `host`.

    The data is `train_csv` and `test_csv` (URIs the cluster reads), or with `kaggle_secret` what the
    Kaggle CLI downloads; `cluster` are pipeline.build_pipeline's other settings (image, accelerator, gpus, ...).
    Prints the run's id and link; with `wait`, follows the run and returns 0 if it succeeded, 1 if not.
    """
    if not kaggle_secret and not (train_csv and test_csv):
        raise SystemExit("error: submit needs --train-csv and --test-csv, or --kaggle-secret to download the data")
    import kfp  # the client side of kfp: only submit needs it
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    data = {} if kaggle_secret else {"train_csv": train_csv, "test_csv": test_csv}
    arguments = {**data, **pipeline.PROFILES[profile], **parse_params(params)}
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="This client only works with Kubeflow Pipeline v2", category=FutureWarning
        )
        package = pipeline.compile_pipeline(
            Path(folder) / "digit_recognizer_pipeline.yaml", kaggle_secret=kaggle_secret, **cluster
        )
        try:
            client = kfp.Client(host=host, existing_token=token, **({"namespace": namespace} if namespace else {}))
            run = client.create_run_from_pipeline_package(
                str(package), arguments=arguments, run_name=run_name, experiment_name=experiment, namespace=namespace
            )
            print(f"run {run.run_id} started: {host.rstrip('/')}/#/runs/details/{run.run_id}", flush=True)
            if not wait:
                return 0
            state = client.wait_for_run_completion(run.run_id, timeout=timeout, sleep_duration=poll_seconds).state
        except ApiException as error:
            raise SystemExit(
                f"error: the Kubeflow Pipelines API at {host} answered {error.status}: {api_message(error)}"
            ) from None
        except (HTTPError, ConnectionError) as error:
            raise SystemExit(f"error: cannot reach Kubeflow Pipelines at {host}: {error}") from None
        except TimeoutError:
            raise SystemExit(f"error: run {run.run_id} did not finish within {timeout} s") from None
    print(f"run {run.run_id} finished: {state}")
    return 0 if state == "SUCCEEDED" else 1


def api_message(error) -> str:
    """What the KFP API server said in its error body (JSON with a `message`), else the body or the reason."""
    try:
        return json.loads(error.body).get("message") or error.body
    except (TypeError, ValueError):
        return error.body or error.reason
