"""kfp.local's own wording, as runner/kfp_local_log.py reads it: real kfp.local runs of two tiny pipelines say
each thing, so a kfp upgrade that words them otherwise fails here."""

import subprocess
import sys

from runner.kfp_local_log import TaskEvent, parse
from tests.conftest import ROOT

TINY_RUN = """
import sys

from kfp import dsl, local

from runner.execute import log_to_stdout


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def succeed(text: str) -> str:
    return text


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def fail_without_a_word():
    raise SystemExit(1)


@dsl.pipeline
def succeeding():
    succeed(text="cached").set_caching_options(True)


@dsl.pipeline
def failing():
    fail_without_a_word().set_caching_options(False).set_retry(num_retries=1, backoff_duration="0s")


log_to_stdout()
local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=sys.argv[1], raise_on_error=False,
           enable_caching=True)
succeeding()
succeeding()  # the second time, `succeed` is a cache hit
failing()
"""


def test_kfp_locals_own_lines_are_read_as_it_words_them(tmp_path):
    script = tmp_path / "tiny_run.py"  # a file: KFP reads a component's source from it
    script.write_text(TINY_RUN)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "root")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    events = [event for line in result.stdout.splitlines() if (event := parse(line))]
    failure, retry = TaskEvent("failed", "fail_without_a_word"), TaskEvent("retried", "fail_without_a_word", 1, 2, 0.0)
    assert events == [TaskEvent("reused", "succeed"), failure, retry, failure], result.stdout + result.stderr


def test_other_lines_are_none_of_its_events():
    for line in ("    epoch 1/6: loss 2.0", "Task train-component finished with status SUCCESS", "", "Task x failed"):
        assert parse(line) is None
