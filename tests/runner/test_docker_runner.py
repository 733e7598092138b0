"""runner/docker.py against a stand-in Docker client (tests/test_docker.py runs the real engine)."""

from types import SimpleNamespace

import pytest

from runner.docker import docker_runner, stop_containers


class StandInDocker:
    """docker.from_env()'s client as kfp.local's DockerRunner and stop_containers use it: records what is asked."""

    def __init__(self, runtimes):
        self.runtimes, self.run_arguments, self.killed = runtimes, [], []
        self.images = SimpleNamespace(
            list=lambda: [SimpleNamespace(tags=["digit-recognizer-train:latest"], attrs={"RepoDigests": []})]
        )
        self.containers = SimpleNamespace(run=self.run, list=self.list)

    def info(self):
        return {"Runtimes": self.runtimes}

    def run(self, **arguments):
        self.run_arguments.append(arguments)
        return SimpleNamespace(logs=lambda stream: [], wait=lambda: {"StatusCode": 0})

    def list(self, filters):
        return [
            SimpleNamespace(kill=lambda name=name: self.killed.append(name))
            for name in ("step-1", "step-2")
            if filters == {"label": "digit-recognizer.run=test"}
        ]

    def close(self):
        pass


def test_gpus_reach_the_containers_device_requests(monkeypatch, tmp_path):
    import docker
    from kfp.local.docker_task_handler import DockerTaskHandler

    client = StandInDocker({"runc": {}, "nvidia": {"path": "nvidia-container-runtime"}})
    monkeypatch.setattr(docker, "from_env", lambda: client)
    for gpus, count in (("all", -1), ("2", 2)):
        runner = docker_runner(gpus, "digit-recognizer.run=test")
        DockerTaskHandler("digit-recognizer-train:latest", ["python", "-m", "x"], str(tmp_path), runner).run()
        (request,) = client.run_arguments[-1]["device_requests"]
        assert request["Count"] == count and request["Capabilities"] == [["gpu"]]
        assert client.run_arguments[-1]["labels"] == ["digit-recognizer.run=test"]
    assert "device_requests" not in docker_runner(None, "l").container_run_args
    with pytest.raises(SystemExit, match=r"^error: --gpus 'two': expected all or a number of GPUs$"):
        docker_runner("two", "l")


def test_gpus_without_an_nvidia_runtime_is_a_one_line_error(monkeypatch):
    import docker

    monkeypatch.setattr(docker, "from_env", lambda: StandInDocker({"runc": {}}))
    with pytest.raises(
        SystemExit,
        match=r"^error: --gpus all: Docker here has no NVIDIA runtime \(only runc\); "
        r"install the NVIDIA Container Toolkit: https://",
    ):
        docker_runner("all", "l")


def test_an_interrupted_run_kills_its_labelled_containers(monkeypatch, tmp_path):
    import docker

    client = StandInDocker({"runc": {}})
    monkeypatch.setattr(docker, "from_env", lambda: client)
    stop_containers("digit-recognizer.run=test")
    assert client.killed == ["step-1", "step-2"]
    monkeypatch.undo()  # the real client, which finds no engine: nothing to stop, and no error
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    stop_containers("digit-recognizer.run=test")
