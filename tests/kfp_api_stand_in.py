"""A stand-in for the Kubeflow Pipelines REST API (v2beta1), as far as `pipeline.py submit` uses it.

It answers the way the real API server does (field names and states of the v2beta1 API: healthz,
experiments, runs) and records every request, so a test sees what kfp.Client sent. No cluster
can run where this project is built; the contract is what is tested.
"""

import itertools
import threading

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class StandInKfpApi:
    def __init__(self, run_states=("RUNNING", "SUCCEEDED"), reject_runs_with=None):
        self.requests, self.experiments, self.runs = [], {}, {}
        self.run_states, self.reject_runs_with = list(run_states), reject_runs_with
        self.ids = itertools.count(1)
        self.app = self._build()

    def _build(self):
        app = FastAPI()

        @app.middleware("http")
        async def record(request: Request, call_next):
            body = await request.body()
            self.requests.append(
                (request.method, request.url.path, dict(request.query_params), body, dict(request.headers))
            )
            return await call_next(request)

        @app.get("/apis/v2beta1/healthz")
        async def healthz():
            return {"multi_user": False}

        @app.get("/apis/v2beta1/experiments")
        async def list_experiments():
            return {"experiments": list(self.experiments.values()), "total_size": len(self.experiments)}

        @app.post("/apis/v2beta1/experiments")
        async def create_experiment(request: Request):
            body = await request.json()
            experiment = {
                "experiment_id": f"experiment-{next(self.ids)}",
                "display_name": body["display_name"],
                "namespace": body.get("namespace", ""),
                "storage_state": "AVAILABLE",
                "created_at": "2026-11-25T12:00:00Z",
            }
            self.experiments[experiment["experiment_id"]] = experiment
            return experiment

        @app.post("/apis/v2beta1/runs")
        async def create_run(request: Request):
            body = await request.json()
            parameters = body.get("runtime_config", {}).get("parameters", {})
            if self.reject_runs_with and self.reject_runs_with in parameters:
                return JSONResponse(
                    status_code=400,
                    content={
                        "error_message": f"Invalid input error: unknown parameter {self.reject_runs_with}",
                        "error_details": "",
                        "code": 3,
                        "message": f"unknown parameter {self.reject_runs_with}",
                    },
                )
            run = {
                "run_id": f"run-{next(self.ids)}",
                "display_name": body["display_name"],
                "experiment_id": body.get("experiment_id"),
                "state": "PENDING",
                "created_at": "2026-11-25T12:00:01Z",
                "runtime_config": body.get("runtime_config", {}),
            }
            self.runs[run["run_id"]] = run
            return run

        @app.get("/apis/v2beta1/runs/{run_id}")
        async def get_run(run_id: str):
            if run_id not in self.runs:
                return JSONResponse(status_code=404, content={"code": 5, "message": f"run {run_id} not found"})
            run = self.runs[run_id]
            if self.run_states:
                run["state"] = self.run_states.pop(0)
            if run["state"] in ("SUCCEEDED", "FAILED"):
                run["finished_at"] = "2026-11-25T12:10:00Z"
            return run

        return app

    def serve(self, port):
        """Start serving on 127.0.0.1:`port` in a thread; returns a function that stops it."""
        # log_config=None: uvicorn leaves logging alone (its handlers would keep a test's captured stream)
        server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_config=None))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            thread.join(0.01)

        def stop():
            server.should_exit = True
            thread.join(10)

        return stop
