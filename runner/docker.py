"""kfp.local's DockerRunner for `run --docker`: its containers labelled with the run, so an interrupted run can
stop them, and given this machine's GPUs with `--gpus`, as `docker run --gpus` does."""

from kfp import local

NVIDIA_TOOLKIT = "https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html"


def run_label(pipeline_root: str) -> str:
    """The label of a run's containers: its pipeline root names it."""
    return f"digit-recognizer.run={pipeline_root}"


def docker_runner(gpus: str | None, label: str) -> local.DockerRunner:
    """A DockerRunner whose containers carry `label` and, with `gpus` ("all" or a count), that many GPUs;
    a one-line error (SystemExit) for a bad count, or a Docker that cannot give GPUs."""
    import docker

    arguments = {"labels": [label]}
    if gpus:
        if gpus != "all" and not (gpus.isdigit() and int(gpus) > 0):
            raise SystemExit(f"error: --gpus {gpus!r}: expected all or a number of GPUs")
        try:
            runtimes = docker.from_env().info().get("Runtimes", {})
        except docker.errors.DockerException as error:
            raise SystemExit(f"error: --gpus: cannot reach Docker ({error})") from None
        if "nvidia" not in runtimes:
            raise SystemExit(
                f"error: --gpus {gpus}: Docker here has no NVIDIA runtime (only {', '.join(sorted(runtimes))}); "
                f"install the NVIDIA Container Toolkit: {NVIDIA_TOOLKIT}"
            )
        count = -1 if gpus == "all" else int(gpus)
        arguments["device_requests"] = [docker.types.DeviceRequest(count=count, capabilities=[["gpu"]])]
    return local.DockerRunner(**arguments)


def stop_containers(label: str) -> None:
    """Kill the running containers labelled `label`; without a Docker engine there are none."""
    import docker

    try:
        for container in docker.from_env().containers.list(filters={"label": label}):
            container.kill()
    except docker.errors.DockerException:
        pass
