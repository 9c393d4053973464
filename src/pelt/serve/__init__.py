"""`pelt serve`: many task adapters on one backbone over HTTP, requests of any mix of tasks batched together.

    from pelt.serve import ServerSettings, TaskServer, serving_in_thread
    server = TaskServer(["runs/sst2/adapter", "runs/rte/adapter"], ServerSettings(port=0))
    with serving_in_thread(server) as url:          # or pelt.serve.run(server) in the foreground
        ...                                          # POST {url}/v1/predict {"task": "sst2", "inputs": [...]}
"""

from pelt.serve.app import create_app, run, serving_in_thread
from pelt.serve.server import ServerSettings, TaskServer

__all__ = ["ServerSettings", "TaskServer", "create_app", "run", "serving_in_thread"]
