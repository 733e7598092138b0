"""The command line of pipeline.py, and its local runner: one module a job.

cli (the commands and their options), params (`--param NAME=VALUE`, typed from the pipeline's signature),
submit (a run on a Kubeflow cluster), local (`run`: the pipeline on this machine), execute (the process that
runs kfp.local for it), console (what the terminal shows of a run), kfp_local_log (what only kfp.local itself
says), processes (starting and stopping that process and its steps), docker (kfp.local's DockerRunner),
record (run.json), outputs (what a run leaves in its folder). Only `run` imports more than kfp.
"""
