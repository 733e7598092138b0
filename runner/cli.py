"""The command line of pipeline.py: compile, run and submit, and their options (pipeline.py's docstring shows them)."""

import argparse

import pipeline
from pipeline import CHECKPOINT_MOUNT, DEFAULT_ACCELERATOR, IMAGE_NAME, PROFILES, SERVE_IMAGE_NAME, TOLERATION_EFFECTS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="pipeline.py",
        description="The Digit Recognizer pipeline for Kubeflow Pipelines (KFP v2): compile it "
        "for a cluster, run it on this machine, or submit it to a cluster.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    compile_parser = commands.add_parser("compile", help="write the pipeline YAML that a Kubeflow cluster accepts")
    compile_parser.add_argument(
        "--output", default="digit_recognizer_pipeline.yaml", help="YAML file to write (default: %(default)s)"
    )
    image_options(compile_parser)
    cluster_options(compile_parser)
    run_parser = commands.add_parser("run", help="run the whole pipeline on this machine with kfp.local")
    run_parser.add_argument(
        "--data",
        help="folder with Kaggle's train.csv and test.csv (default: data/digit-recognizer; with --resume, the run's)",
    )
    run_parser.add_argument("--out", help="folder for the outputs (default: runs/<timestamp>, linked from runs/latest)")
    parameter_options(run_parser, profile_default=None)
    run_parser.add_argument(
        "--docker",
        action="store_true",
        help="run each step in its container (kfp.local's DockerRunner; make images builds the image)",
    )
    run_parser.add_argument(
        "--gpus",
        metavar="all|N",
        help="with --docker: give the containers all or N of this machine's GPUs (needs the NVIDIA Container Toolkit)",
    )
    run_parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="go on with the interrupted run in RUN_DIR: its finished steps are reused, "
        "training goes on from its last checkpoint",
    )
    run_parser.add_argument(
        "--verbose",
        action="store_true",
        help="print everything kfp.local and the steps print (always in RUN_DIR/run.log)",
    )
    image_options(run_parser)
    submit_parser = commands.add_parser("submit", help="start a run on a Kubeflow Pipelines cluster (kfp.Client)")
    submit_parser.add_argument(
        "--host",
        required=True,
        help="the KFP API endpoint, e.g. http://localhost:8080 or https://kubeflow.example/pipeline",
    )
    submit_parser.add_argument("--train-csv", help="train.csv as a URI the cluster reads (gs://, s3://, minio://)")
    submit_parser.add_argument("--test-csv", help="test.csv as a URI the cluster reads")
    submit_parser.add_argument(
        "--experiment", default="digit-recognizer", help="experiment to file the run under (default: %(default)s)"
    )
    submit_parser.add_argument("--run-name", help="the run's name in the UI (default: the package name and time)")
    submit_parser.add_argument(
        "--wait", action="store_true", help="follow the run to its end; exit 0 only if it succeeded"
    )
    submit_parser.add_argument(
        "--poll-seconds",
        type=float,
        default=5,
        help="with --wait: seconds between status checks (default: %(default)s)",
    )
    submit_parser.add_argument(
        "--timeout",
        type=float,
        default=7 * 24 * 3600,
        help="with --wait: give up after this many seconds (default: a week)",
    )
    submit_parser.add_argument("--namespace", help="Kubernetes namespace of a multi-user Kubeflow")
    submit_parser.add_argument("--token", help="a bearer token for the KFP API (kfp.Client's existing_token)")
    parameter_options(submit_parser)
    image_options(submit_parser)
    cluster_options(submit_parser)
    args = parser.parse_args(argv)
    image = pipeline.train_image(args.image_prefix, args.tag)
    if args.command == "run":
        if args.resume and args.out:
            raise SystemExit("error: --resume continues in the run's own folder: give no --out")
        from runner.local import run_locally  # the local runner imports what the steps need: only `run` does

        run_locally(
            args.data,
            args.out,
            args.profile,
            args.param,
            docker_image=image if args.docker else None,
            gpus=args.gpus,
            resume=args.resume,
            verbose=args.verbose,
        )
        return
    cluster = {
        "image": image,
        "accelerator": args.accelerator,
        "gpus": args.gpus,
        "node_selector": dict(args.node_selector),
        "tolerations": tuple(args.toleration),
        "kaggle_secret": args.kaggle_secret,
        "deploy_to": deploy_target(args),
        "checkpoint_pvc": args.checkpoint_pvc,
    }
    if args.command == "compile":
        print(f"wrote {pipeline.compile_pipeline(args.output, **cluster)} (steps run in {image})")
    else:
        from runner.submit import submit

        raise SystemExit(
            submit(
                args.host,
                args.train_csv,
                args.test_csv,
                args.experiment,
                args.run_name,
                args.param,
                args.wait,
                args.namespace,
                args.token,
                args.poll_seconds,
                args.timeout,
                profile=args.profile,
                **cluster,
            )
        )


def parameter_options(parser: argparse.ArgumentParser, profile_default: str | None = "default") -> None:
    parser.add_argument(
        "--profile",
        choices=list(PROFILES),
        default=profile_default,
        help="quick: one epoch of the first 8,400 rows, for demos and tests; default: one CNN, 45 epochs; "
        "best: an ensemble of 5 CNNs, each on its own split, in one ONNX model (default: default; with --resume, "
        "the run's)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a pipeline parameter on top of the profile, e.g. --param epochs=20 (repeatable)",
    )


def image_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image-prefix", default="", help=f"registry and path before {IMAGE_NAME}, e.g. ghcr.io/me/ (default: none)"
    )
    parser.add_argument("--tag", default="latest", help="the training image's tag (default: %(default)s)")


def cluster_options(parser: argparse.ArgumentParser) -> None:
    """Where the steps run on a cluster: the train pod's node and GPUs, its checkpoints, the data, the deploy step."""
    parser.add_argument(
        "--accelerator",
        default=DEFAULT_ACCELERATOR,
        help="the accelerator the training step asks for (default: %(default)s)",
    )
    parser.add_argument(
        "--no-gpu",
        dest="accelerator",
        action="store_const",
        const=None,
        help="train on CPU nodes: ask for no accelerator",
    )
    parser.add_argument(
        "--gpus",
        type=gpu_count,
        default=1,
        metavar="N",
        help="how many of the accelerator the train pod asks for: "
        "MirroredStrategy trains on each (default: %(default)s)",
    )
    parser.add_argument(
        "--node-selector",
        type=node_label,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run the train pod on a node with this label, e.g. cloud.google.com/gke-accelerator=nvidia-l4 "
        "(repeatable)",
    )
    parser.add_argument(
        "--toleration",
        type=toleration,
        action="append",
        default=[],
        metavar="KEY[=VALUE]:EFFECT",
        help=f"let the train pod run on nodes with this taint, e.g. nvidia.com/gpu:NoSchedule; EFFECT is one of "
        f"{', '.join(TOLERATION_EFFECTS)} (repeatable)",
    )
    parser.add_argument(
        "--checkpoint-pvc",
        metavar="PVC",
        help="a PersistentVolumeClaim for training's checkpoints, mounted at "
        f"{CHECKPOINT_MOUNT}: a retried or rescheduled train pod goes on from the last epoch (default: none)",
    )
    parser.add_argument(
        "--kaggle-secret",
        metavar="SECRET",
        help="download the data with the Kaggle CLI as the first step, "
        "its credentials from this Kubernetes secret (keys username and key, as in kaggle.json)",
    )
    parser.add_argument(
        "--deploy",
        metavar="NAME",
        help="serve a model that passes the gate with KServe, as the InferenceService "
        f"NAME (created, or updated with the canary_traffic_percent parameter); its image is {SERVE_IMAGE_NAME} "
        "with --image-prefix and --tag",
    )
    parser.add_argument(
        "--deploy-namespace", default="", metavar="NS", help="the InferenceService's namespace (default: the run's)"
    )
    parser.add_argument(
        "--deploy-runtime",
        choices=DEPLOY_RUNTIMES,
        default=DEPLOY_RUNTIMES[0],
        help=f"what serves it: {DEPLOY_RUNTIMES[0]}, our image, reading model.onnx; or {DEPLOY_RUNTIMES[1]}, "
        "KServe's stock runtime for ONNX (Triton), reading the Triton model repository export writes "
        "(default: %(default)s)",
    )


def gpu_count(text: str) -> int:
    if not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"expected a number of GPUs, 1 or more, got {text!r}")
    return int(text)


def node_label(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not (key and separator):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def toleration(text: str) -> pipeline.Toleration:
    taint, separator, effect = text.rpartition(":")
    key, _, value = taint.partition("=")
    if not separator:
        raise argparse.ArgumentTypeError(f"expected KEY[=VALUE]:EFFECT, got {text!r}")
    parsed = pipeline.Toleration(key, effect, value)
    try:
        pipeline.check_toleration(parsed)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return parsed


# What serves a deployed model: our serve image, or KServe's stock ONNX runtime (components.deploy, image "").
DEPLOY_RUNTIMES = ("serve-image", "kserve-tritonserver")


def deploy_target(args: argparse.Namespace) -> pipeline.DeployTarget | None:
    """The DeployTarget of `--deploy` (None without it): the serve image named like the training image, or none for
    KServe's stock runtime."""
    if not args.deploy:
        return None
    from components.deploy import DeployError, check_name

    try:
        check_name(args.deploy)
    except DeployError as error:
        raise SystemExit(f"error: --deploy: {error}") from None
    serve_image = (
        f"{args.image_prefix}{SERVE_IMAGE_NAME}:{args.tag}" if args.deploy_runtime == DEPLOY_RUNTIMES[0] else ""
    )
    return pipeline.DeployTarget(args.deploy, args.deploy_namespace, serve_image)
