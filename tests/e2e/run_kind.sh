#!/usr/bin/env bash
# The kind end-to-end, one step per command; tests/e2e/test_kind.py (make test-e2e) and CI's
# kind job drive it. Needs docker, kind, kubectl, helm and curl on PATH.
#
#   tests/e2e/run_kind.sh up              # kind cluster, operator image, Seldon Core, MinIO, MLflow, operator
#   tests/e2e/run_kind.sh train           # trains the rf-regressor, logs it to MLflow; prints the run id last
#   tests/e2e/run_kind.sh promote RUN_ID  # applies manifests/samples/promotion.yaml; waits for Promoted + Available
#   tests/e2e/run_kind.sh predict         # a v2 inference request to the SeldonDeployment; prints the response
#   tests/e2e/run_kind.sh diagnose        # what to look at when a step failed
#   tests/e2e/run_kind.sh down            # deletes the kind cluster
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${E2E_CLUSTER:-promoter-e2e}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.31.6}"
IMAGE="mlflow-seldon-promoter:e2e"
SELDON_CHART_VERSION="${SELDON_CHART_VERSION:-1.18.2}"
# The server Seldon runs for SKLEARN_SERVER with protocol v2. The model is trained inside this
# same image (see train), because a pickled scikit-learn model only loads reliably in the
# scikit-learn and numpy versions that wrote it.
MLSERVER_IMAGE="${MLSERVER_IMAGE:-seldonio/mlserver:1.7.1-sklearn}"
MLFLOW_CLIENT="mlflow-skinny==3.17.2 boto3==1.44.8"
NAMESPACE="models"  # where the promotion, its Secrets and the SeldonDeployment live
PROMOTION="rf-regressor"
TIMEOUT="${E2E_TIMEOUT:-600s}"

kc() { kubectl --context "kind-${CLUSTER}" "$@"; }
log() { printf '\n=== %s\n' "$*" >&2; }

# kubectl port-forward in the background, stopped when the script exits; sets PORT to the
# local port once it answers.
FORWARDS=()
PORT=""
forward() {  # namespace service remote-port
    PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    kc -n "$1" port-forward "svc/$2" "${PORT}:$3" >/dev/null 2>&1 &
    FORWARDS+=("$!")
    for _ in $(seq 1 50); do
        if curl -s -o /dev/null "http://127.0.0.1:${PORT}/"; then
            return 0
        fi
        sleep 0.2
    done
    echo "port-forward to $1/svc/$2:$3 did not come up" >&2
    return 1
}
stop_forwards() {
    local pid
    for pid in "${FORWARDS[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_forwards EXIT

secret_value() {  # namespace secret key
    kc -n "$1" get secret "$2" -o "jsonpath={.data.$3}" | base64 -d
}

cmd_up() {
    log "kind cluster ${CLUSTER} (${KIND_NODE_IMAGE})"
    if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
        kind create cluster --name "$CLUSTER" --image "$KIND_NODE_IMAGE" --wait 120s
    fi

    log "operator image ${IMAGE}, and ${MLSERVER_IMAGE} loaded into the node"
    docker build -t "$IMAGE" "$REPO"
    docker pull -q "$MLSERVER_IMAGE"
    kind load docker-image --name "$CLUSTER" "$IMAGE" "$MLSERVER_IMAGE"

    log "Seldon Core v1 (chart seldon-core-operator ${SELDON_CHART_VERSION})"
    helm upgrade --install seldon-core seldon-core-operator \
        --kube-context "kind-${CLUSTER}" \
        --repo https://storage.googleapis.com/seldon-charts --version "$SELDON_CHART_VERSION" \
        --namespace seldon-system --create-namespace \
        --set usageMetrics.enabled=false --set istio.enabled=false --set ambassador.enabled=false \
        --set predictor_servers.SKLEARN_SERVER.protocols.v2.image="${MLSERVER_IMAGE%:*}" \
        --set predictor_servers.SKLEARN_SERVER.protocols.v2.defaultImageVersion="${MLSERVER_IMAGE##*:}" \
        --wait --timeout "$TIMEOUT"

    log "MinIO and MLflow (tests/e2e/cluster)"
    kc create namespace minio-system --dry-run=client -o yaml | kc apply -f -
    if ! kc -n minio-system get secret minio-root >/dev/null 2>&1; then
        kc -n minio-system create secret generic minio-root \
            --from-literal=rootUser="e2e-$(openssl rand -hex 4)" \
            --from-literal=rootPassword="$(openssl rand -hex 20)"
    fi
    kc apply -k "$REPO/tests/e2e/cluster"
    kc -n minio-system rollout status deploy/minio --timeout "$TIMEOUT"
    kc -n minio-system wait job/create-buckets --for=condition=complete --timeout "$TIMEOUT"
    kc -n mlflow rollout status deploy/mlflow --timeout "$TIMEOUT"

    log "the operator (CRD from crds/, then manifests/overlays/kind)"
    kc apply --server-side -f "$REPO/crds/"
    kc wait --for=condition=established crd/modelpromotions.mlops.dev --timeout 60s
    kc apply -k "$REPO/manifests/overlays/kind"
    kc -n promoter-system rollout status deploy/mlflow-seldon-promoter --timeout "$TIMEOUT"

    log "namespace ${NAMESPACE} with the storage credentials the promotion uses"
    kc create namespace "$NAMESPACE" --dry-run=client -o yaml | kc apply -f -
    kc -n "$NAMESPACE" create secret generic minio-credentials \
        --from-literal=AWS_ACCESS_KEY_ID="$(secret_value minio-system minio-root rootUser)" \
        --from-literal=AWS_SECRET_ACCESS_KEY="$(secret_value minio-system minio-root rootPassword)" \
        --dry-run=client -o yaml | kc apply -f -
}

cmd_train() {
    local mlflow_port minio_port
    forward mlflow mlflow 5000
    mlflow_port="$PORT"
    forward minio-system minio 9000
    minio_port="$PORT"
    log "training in ${MLSERVER_IMAGE} against MLflow on :${mlflow_port}, MinIO on :${minio_port}"
    # The host network reaches the port-forwards; the experiments folder is mounted read-only.
    docker run --rm --network host --user 0 --entrypoint /bin/bash \
        -v "$REPO/experiments:/experiments:ro" \
        -e MLFLOW_TRACKING_URI="http://127.0.0.1:${mlflow_port}" \
        -e MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:${minio_port}" \
        -e AWS_ACCESS_KEY_ID="$(secret_value minio-system minio-root rootUser)" \
        -e AWS_SECRET_ACCESS_KEY="$(secret_value minio-system minio-root rootPassword)" \
        -e PIP_DISABLE_PIP_VERSION_CHECK=1 -e PIP_ROOT_USER_ACTION=ignore \
        "$MLSERVER_IMAGE" -ec "
            python -m pip install --quiet --no-cache-dir ${MLFLOW_CLIENT} >&2
            python -c 'import numpy, sklearn; print(\"scikit-learn\", sklearn.__version__, \"numpy\", numpy.__version__)' >&2
            python /experiments/train.py --n-estimators 50 --experiment promoter-e2e"
}

cmd_promote() {
    local run_id="${1:?usage: run_kind.sh promote RUN_ID}" phase=""
    log "promoting run ${run_id} (manifests/samples/promotion.yaml)"
    sed "s/RUN_ID/${run_id}/" "$REPO/manifests/samples/promotion.yaml" | kc -n "$NAMESPACE" apply -f -
    for _ in $(seq 1 120); do
        phase="$(kc -n "$NAMESPACE" get modelpromotion "$PROMOTION" -o 'jsonpath={.status.phase}')"
        case "$phase" in
            Promoted) break ;;
            Rejected | Failed)
                kc -n "$NAMESPACE" get modelpromotion "$PROMOTION" -o 'jsonpath={.status.message}{"\n"}' >&2
                return 1 ;;
        esac
        sleep 5
    done
    [ "$phase" = Promoted ] || { echo "promotion still ${phase:-Pending} after 10 minutes" >&2; return 1; }
    kc -n "$NAMESPACE" get modelpromotions -o wide
    log "waiting for SeldonDeployment ${PROMOTION} to be Available"
    kc -n "$NAMESPACE" wait "seldondeployment/${PROMOTION}" --for=jsonpath='{.status.state}'=Available \
        --timeout "$TIMEOUT"
}

cmd_predict() {
    local url service port path
    # Seldon publishes where the deployment answers, http://<service>.<namespace>:<port>/<path>;
    # without it, the predictor's Service (<name>-<predictor>) on the executor's port 8000.
    url="$(kc -n "$NAMESPACE" get seldondeployment "$PROMOTION" -o 'jsonpath={.status.address.url}')"
    service="${PROMOTION}-default" port=8000 path="/v2/models/model/infer"
    if [[ "$url" =~ ^http://([^.:/]+)[^:/]*:([0-9]+)(/v2/models/[^/]+/infer)$ ]]; then
        service="${BASH_REMATCH[1]}" port="${BASH_REMATCH[2]}" path="${BASH_REMATCH[3]}"
    fi
    forward "$NAMESPACE" "$service" "$port"
    log "POST ${path} on svc/${service}:${port} (status.address.url: ${url:-none})"
    # Two rows of the diabetes features (experiments/data/diabetes.csv), in its column order.
    curl -sS --fail-with-body --max-time 60 -H 'Content-Type: application/json' \
        "http://127.0.0.1:${PORT}${path}" -d '{
          "inputs": [{"name": "predict", "shape": [2, 10], "datatype": "FP64", "data": [
            0.0380759064, 0.0506801187, 0.0616962065, 0.0218723855, -0.0442234984,
            -0.0348207628, -0.0434008457, -0.0025922620, 0.0199074862, -0.0176461252,
            -0.0018820165, -0.0446416365, -0.0514740612, -0.0263275281, -0.0084487241,
            -0.0191633397, 0.0744115641, -0.0394933829, -0.0683315471, -0.0922040496]}]}'
    echo
}

cmd_diagnose() {
    kc get pods -A -o wide || true
    kc -n promoter-system logs deploy/mlflow-seldon-promoter --tail 200 || true
    kc -n "$NAMESPACE" get modelpromotions -o yaml || true
    kc -n "$NAMESPACE" describe seldondeployments || true
    kc -n "$NAMESPACE" get events --sort-by=.lastTimestamp || true
    local pod
    for pod in $(kc -n "$NAMESPACE" get pods -o name 2>/dev/null); do
        kc -n "$NAMESPACE" logs "$pod" --all-containers --tail 100 || true
    done
}

cmd_down() {
    kind delete cluster --name "$CLUSTER"
}

case "${1:-}" in
    up | train | predict | diagnose | down) "cmd_$1" ;;
    promote) shift; cmd_promote "$@" ;;
    *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
