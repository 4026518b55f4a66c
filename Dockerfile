# The operator image: `kopf run -m promoter.handlers`, non-root, runtime packages only.
#
#   docker build -t mlflow-seldon-promoter:0.1.0 .
#   docker run --rm mlflow-seldon-promoter:0.1.0 --namespace=models   # args replace --all-namespaces
#
# The versions come from constraints.txt, the same pins the tests run with. Only the operator's
# own dependencies (pyproject's [project.dependencies]) are installed: no MLflow, no scikit-learn.
#
# BASE is the pinned official Python image. `make test-image` builds with a bookworm base made
# locally with debootstrap instead (devstack/image.py), for a machine with no registry; behind a
# TLS-inspecting proxy it passes pip's CA bundle as the build secret `pip-ca`, which no layer keeps.
ARG BASE=python:3.11.14-slim-bookworm

FROM ${BASE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY operator/ operator/
# Only operator/ is in the context, so the wheel holds the `promoter` package alone. pip and
# setuptools are not needed to run it; the bytecode is compiled here, once.
RUN --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && pip install --no-cache-dir -c constraints.txt . \
 && pip uninstall --yes pip setuptools \
 && python -m compileall -q /opt/venv/lib


FROM ${BASE}

LABEL org.opencontainers.image.title="mlflow-seldon-promoter" \
      org.opencontainers.image.description="Kubernetes operator: promote an MLflow run to Seldon Core when its metrics pass the gates"

# Bytecode is compiled at build time; the root filesystem is read-only at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY --from=builder /opt/venv /opt/venv

# A numeric user, so Kubernetes can check runAsNonRoot without reading /etc/passwd.
USER 65532:65532

# 8080: Prometheus metrics (PROMOTER_METRICS_PORT); 8081: kopf's liveness endpoint.
EXPOSE 8080 8081

# Exec form: no shell at run time. CMD holds what to watch; a Deployment's `args` replace it.
ENTRYPOINT ["/opt/venv/bin/kopf", "run", "-m", "promoter.handlers", "--standalone", \
            "--liveness=http://0.0.0.0:8081/healthz"]
CMD ["--all-namespaces"]
