"""A test double of the part of Seldon Core v1's controller this project relies on.

Seldon Core v1's own controller cannot run here (its Go module is refused by the module proxy,
and v1.18+ is BSL-licensed: read, never copied). This double reproduces its documented
behaviour for one case, a SeldonDeployment predictor served by MLServer (``protocol: v2`` with
``SKLEARN_SERVER`` or ``MLFLOW_SERVER``): the Deployment and Services it creates (render.py),
spec changes rolled out by replacing the Deployment's Pod template, and the status it writes,
quirks included (controller.py). Anything else gets ``state: Failed`` with a description saying
devstack does not serve it. It is never the thing under test. Run by ``devstack up`` as
``python -m devstack.seldon``.
"""
