#!/usr/bin/env bash
# The kind end-to-end, one step per command; tests/e2e/test_kind.py (make test-e2e) and CI's
# kind job drive it. Needs docker, kind, kubectl, helm and curl on PATH; bash 3.2 or later.
#
#   tests/e2e/run_kind.sh up              # kind cluster, images loaded into it, Seldon Core, MinIO, MLflow, operator
#   tests/e2e/run_kind.sh train           # builds the trainer for the serving image, trains, prints the run id last
#   tests/e2e/run_kind.sh promote RUN_ID  # applies manifests/samples/promotion.yaml; waits for Promoted + Available
#   tests/e2e/run_kind.sh predict         # a v2 inference request to the SeldonDeployment; prints the response
#   tests/e2e/run_kind.sh diagnose        # what to look at when a step failed
#   tests/e2e/run_kind.sh down            # deletes the kind cluster
#
# Sourced (`source tests/e2e/run_kind.sh`), it defines its helpers and runs nothing: the unit
# tests drive forward and stop_forwards that way.
# Every optional check, but braces around every variable (SC2250) and set -e being off inside a
# function called as a condition (SC2310): the ones called so are one command (kc) or return their
# status explicitly.
# shellcheck enable=all disable=SC2250,SC2310
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${E2E_CLUSTER:-promoter-e2e}"
# kind v0.27.0's node image for Kubernetes 1.31.6, by the digest its release notes list: kind
# supports a node image only with the release that built it, and the tag alone does not say which.
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.31.6@sha256:28b7cbb993dfe093c76641a0c95807637213c9109b761f1d422c2400e22b8e87}"
IMAGE="mlflow-seldon-promoter:e2e"
SELDON_CHART_VERSION="${SELDON_CHART_VERSION:-1.18.2}"
# The server Seldon runs for SKLEARN_SERVER with protocol v2, and the trainer variant with its
# Python and scikit-learn stack (experiments/Dockerfile, SERVING): a pickled model loads cleanly
# only under the versions that wrote it.
MLSERVER_IMAGE="${MLSERVER_IMAGE:-seldonio/mlserver:1.7.1-sklearn}"
MLSERVER_VERSION="${MLSERVER_IMAGE##*:}"
SERVING="mlserver-${MLSERVER_VERSION%-sklearn}"
TRAINER_IMAGE="rf-trainer:${SERVING}"
NAMESPACE="models"  # where the promotion, its Secrets and the SeldonDeployment live
PROMOTION="rf-regressor"
TIMEOUT="${E2E_TIMEOUT:-300s}"                  # each rollout, Helm release and condition
FORWARD_TIMEOUT="${E2E_FORWARD_TIMEOUT:-60}"    # whole seconds for a port-forward to answer

kc() { kubectl --context "kind-${CLUSTER}" "$@"; }
log() { printf '\n=== %s\n' "$*" >&2; }

# Scratch space (port-forward logs, image archives), removed on exit with the port-forwards.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/run_kind.XXXXXX")"
cleanup() {
    stop_forwards
    rm -rf "${WORK}"
}
trap cleanup EXIT
# Without these a TERM (pytest's step timeout) or a Ctrl-C ends bash without its EXIT trap.
trap 'exit 130' INT
trap 'exit 143' TERM

# kubectl port-forward in the background on a local port kubectl picks, so two steps never race
# for one; sets PORT once the forward answers HTTP. kubectl itself is the background job, not a
# function or subshell wrapping it, so the pid kept is the process stop_forwards must end.
FORWARDS=()
PORT=""
forward() {  # namespace service remote-port
    local out="${WORK}/forward-$1-$2-$3.log" pid deadline
    PORT=""
    : >"${out}"  # there before the job's own redirection, which runs in the child, later
    kubectl --context "kind-${CLUSTER}" -n "$1" port-forward "svc/$2" ":$3" --address 127.0.0.1 >>"${out}" 2>&1 &
    pid=$!
    FORWARDS+=("${pid}")
    deadline=$((SECONDS + FORWARD_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "${pid}" 2>/dev/null; then
            echo "port-forward to $1/svc/$2:$3 exited:" >&2
            cat "${out}" >&2
            return 1
        fi
        # kubectl (client-go) prints "Forwarding from 127.0.0.1:<local> -> <remote>" once it listens.
        [[ -n "${PORT}" ]] || PORT="$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9][0-9]*\) .*/\1/p' "${out}")"
        # Any HTTP answer will do; a forward that accepts and never answers costs 2 s a try.
        if [[ -n "${PORT}" ]] && curl -s -o /dev/null --noproxy '*' --max-time 2 "http://127.0.0.1:${PORT}/"; then
            return 0
        fi
        sleep 0.2
    done
    echo "port-forward to $1/svc/$2:$3 did not answer within ${FORWARD_TIMEOUT}s:" >&2
    cat "${out}" >&2
    return 1
}
# TERM to every forward, KILL to any still there after 5 s, and each reaped before returning.
# ${FORWARDS[@]+...}: bash 3.2 (macOS) calls an empty array unbound under set -u.
stop_forwards() {
    local pid tries=0
    for pid in ${FORWARDS[@]+"${FORWARDS[@]}"}; do
        kill "${pid}" 2>/dev/null || true
    done
    while ((tries < 25)) && alive_forwards; do
        sleep 0.2
        tries=$((tries + 1))
    done
    for pid in ${FORWARDS[@]+"${FORWARDS[@]}"}; do
        kill -9 "${pid}" 2>/dev/null || true
        wait "${pid}" 2>/dev/null || true
    done
    FORWARDS=()
}
alive_forwards() {
    local pid
    for pid in ${FORWARDS[@]+"${FORWARDS[@]}"}; do
        if kill -0 "${pid}" 2>/dev/null; then
            return 0
        fi
    done
    return 1
}

# The decoded value, or a failure naming the Secret and the key: jsonpath prints nothing, and
# exits 0, for a key that is not there. Call it as `var="$(secret_value …)"` on a line of its
# own: inside another command's arguments its failure would go unnoticed.
secret_value() {  # namespace secret key
    local encoded
    encoded="$(kc -n "$1" get secret "$2" -o "jsonpath={.data.$3}")" || return
    if [[ -z "${encoded}" ]]; then
        echo "Secret $1/$2 has no key $3" >&2
        return 1
    fi
    printf '%s' "${encoded}" | base64 -d
}

# kind's list read whole, not piped into `grep -q`: grep stops at the first match, kind gets
# SIGPIPE, and under pipefail an existing cluster would read as missing.
cluster_exists() {
    local clusters
    clusters="$(kind get clusters)" || return
    grep -qx -- "${CLUSTER}" <<<"${clusters}"
}

# The platform of the kind node, which is the Docker engine's own.
engine_platform() {
    docker version --format '{{.Server.Os}}/{{.Server.Arch}}'
}

# `kind load docker-image` imports every platform a multi-platform image lists, and fails on
# the ones Docker's containerd image store never pulled (kind#3795). A single-platform archive,
# `docker save --platform` (Docker 28+), loads with `kind load image-archive` on either image
# store; an older Docker keeps one platform per image anyway, so plain `docker save` does there.
load_images() {  # platform image...
    local platform="$1" image help save
    shift
    help="$(docker save --help)"
    save=(docker save)
    if [[ "${help}" == *--platform* ]]; then
        save+=(--platform "${platform}")
    fi
    for image in "$@"; do
        "${save[@]}" -o "${WORK}/image.tar" "${image}"
        kind load image-archive --name "${CLUSTER}" "${WORK}/image.tar"
        rm -f "${WORK}/image.tar"
    done
}

cmd_up() {
    local platform user password image pulled
    log "kind cluster ${CLUSTER} (${KIND_NODE_IMAGE})"
    if ! cluster_exists; then
        kind create cluster --name "${CLUSTER}" --image "${KIND_NODE_IMAGE}" --wait 120s
    fi

    # The node pulls nothing from Docker Hub: every image it would pull from there is pulled once
    # here, by the engine (with the runner's Docker Hub login when it has one), and loaded.
    platform="$(engine_platform)"
    pulled=(
        "seldonio/seldon-core-operator:${SELDON_CHART_VERSION}"
        "seldonio/seldon-core-executor:${SELDON_CHART_VERSION}"
        "seldonio/rclone-storage-initializer:${SELDON_CHART_VERSION}"
        "${MLSERVER_IMAGE}"
    )
    log "operator image ${IMAGE}, and ${pulled[*]} (${platform}) loaded into the node"
    docker build -t "${IMAGE}" "${REPO}"
    for image in "${pulled[@]}"; do
        docker pull -q --platform "${platform}" "${image}"
    done
    load_images "${platform}" "${IMAGE}" "${pulled[@]}"

    log "Seldon Core v1 (chart seldon-core-operator ${SELDON_CHART_VERSION})"
    helm upgrade --install seldon-core seldon-core-operator \
        --kube-context "kind-${CLUSTER}" \
        --repo https://storage.googleapis.com/seldon-charts --version "${SELDON_CHART_VERSION}" \
        --namespace seldon-system --create-namespace \
        --set usageMetrics.enabled=false --set istio.enabled=false --set ambassador.enabled=false \
        --set predictor_servers.SKLEARN_SERVER.protocols.v2.image="${MLSERVER_IMAGE%:*}" \
        --set predictor_servers.SKLEARN_SERVER.protocols.v2.defaultImageVersion="${MLSERVER_VERSION}" \
        --wait --timeout "${TIMEOUT}"

    log "MinIO and MLflow (tests/e2e/cluster)"
    kc create namespace minio-system --dry-run=client -o yaml | kc apply -f -
    if ! kc -n minio-system get secret minio-root >/dev/null 2>&1; then
        user="e2e-$(openssl rand -hex 4)"
        password="$(openssl rand -hex 20)"
        kc -n minio-system create secret generic minio-root \
            --from-literal=rootUser="${user}" --from-literal=rootPassword="${password}"
    fi
    kc apply -k "${REPO}/tests/e2e/cluster"
    kc -n minio-system rollout status deploy/minio --timeout "${TIMEOUT}"
    kc -n minio-system wait job/create-buckets --for=condition=complete --timeout "${TIMEOUT}"
    kc -n mlflow rollout status deploy/mlflow --timeout "${TIMEOUT}"

    log "the operator (CRD from crds/, then manifests/overlays/kind)"
    kc apply --server-side -f "${REPO}/crds/"
    kc wait --for=condition=established crd/modelpromotions.mlops.dev --timeout 60s
    kc apply -k "${REPO}/manifests/overlays/kind"
    kc -n promoter-system rollout status deploy/mlflow-seldon-promoter --timeout "${TIMEOUT}"

    log "namespace ${NAMESPACE} with the storage credentials the promotion uses"
    kc create namespace "${NAMESPACE}" --dry-run=client -o yaml | kc apply -f -
    user="$(secret_value minio-system minio-root rootUser)"
    password="$(secret_value minio-system minio-root rootPassword)"
    kc -n "${NAMESPACE}" create secret generic minio-credentials \
        --from-literal=AWS_ACCESS_KEY_ID="${user}" --from-literal=AWS_SECRET_ACCESS_KEY="${password}" \
        --dry-run=client -o yaml | kc apply -f -
}

cmd_train() {
    local mlflow_port minio_port versions
    # What the README tells users to train with for this server: experiments/Dockerfile's variant.
    if ! grep -q " AS python-${SERVING}\$" "${REPO}/experiments/Dockerfile"; then
        echo "experiments/Dockerfile has no SERVING=${SERVING} variant for ${MLSERVER_IMAGE}:" \
            "add one with that image's Python and scikit-learn stack (README, Training)" >&2
        return 1
    fi
    log "trainer image ${TRAINER_IMAGE} (experiments/Dockerfile, SERVING=${SERVING}, for ${MLSERVER_IMAGE})"
    docker build --build-arg "SERVING=${SERVING}" -t "${TRAINER_IMAGE}" "${REPO}/experiments"
    versions="$(docker run --rm --entrypoint python "${TRAINER_IMAGE}" -c \
        'import platform, numpy, sklearn; print("Python", platform.python_version(), "scikit-learn", sklearn.__version__, "numpy", numpy.__version__)')"
    echo "${TRAINER_IMAGE}: ${versions}" >&2

    forward mlflow mlflow 5000
    mlflow_port="${PORT}"
    forward minio-system minio 9000
    minio_port="${PORT}"
    AWS_ACCESS_KEY_ID="$(secret_value minio-system minio-root rootUser)"
    AWS_SECRET_ACCESS_KEY="$(secret_value minio-system minio-root rootPassword)"
    export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
    log "training against MLflow on :${mlflow_port}, MinIO on :${minio_port}"
    # The host network reaches the port-forwards; the keys pass by name, not on the command line.
    docker run --rm --network host \
        -e MLFLOW_TRACKING_URI="http://127.0.0.1:${mlflow_port}" \
        -e MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:${minio_port}" \
        -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY \
        "${TRAINER_IMAGE}" --n-estimators 50 --experiment promoter-e2e
}

cmd_promote() {
    local run_id="${1:?usage: run_kind.sh promote RUN_ID}" phase=""
    log "promoting run ${run_id} (manifests/samples/promotion.yaml)"
    sed "s/RUN_ID/${run_id}/" "${REPO}/manifests/samples/promotion.yaml" | kc -n "${NAMESPACE}" apply -f -
    for _ in $(seq 1 96); do
        phase="$(kc -n "${NAMESPACE}" get modelpromotion "${PROMOTION}" -o 'jsonpath={.status.phase}')"
        case "${phase}" in
            Promoted) break ;;
            Rejected | Failed)
                kc -n "${NAMESPACE}" get modelpromotion "${PROMOTION}" -o 'jsonpath={.status.message}{"\n"}' >&2
                return 1 ;;
            *) sleep 5 ;;
        esac
    done
    [[ "${phase}" = Promoted ]] || { echo "promotion still ${phase:-Pending} after 8 minutes" >&2; return 1; }
    kc -n "${NAMESPACE}" get modelpromotions -o wide
    log "waiting for SeldonDeployment ${PROMOTION} to be Available"
    kc -n "${NAMESPACE}" wait "seldondeployment/${PROMOTION}" --for=jsonpath='{.status.state}'=Available \
        --timeout "${TIMEOUT}"
}

cmd_predict() {
    local url service port path
    # Seldon publishes where the deployment answers, http://<service>.<namespace>:<port>/<path>;
    # without it, the predictor's Service (<name>-<predictor>) on the executor's port 8000.
    url="$(kc -n "${NAMESPACE}" get seldondeployment "${PROMOTION}" -o 'jsonpath={.status.address.url}')"
    service="${PROMOTION}-default" port=8000 path="/v2/models/model/infer"
    if [[ "${url}" =~ ^http://([^.:/]+)[^:/]*:([0-9]+)(/v2/models/[^/]+/infer)$ ]]; then
        service="${BASH_REMATCH[1]}" port="${BASH_REMATCH[2]}" path="${BASH_REMATCH[3]}"
    fi
    forward "${NAMESPACE}" "${service}" "${port}"
    log "POST ${path} on svc/${service}:${port} (status.address.url: ${url:-none})"
    # Two rows of the diabetes features (experiments/data/diabetes.csv), in its column order.
    curl -sS --fail-with-body --noproxy '*' --max-time 60 -H 'Content-Type: application/json' \
        "http://127.0.0.1:${PORT}${path}" -d '{
          "inputs": [{"name": "predict", "shape": [2, 10], "datatype": "FP64", "data": [
            0.0380759064, 0.0506801187, 0.0616962065, 0.0218723855, -0.0442234984,
            -0.0348207628, -0.0434008457, -0.0025922620, 0.0199074862, -0.0176461252,
            -0.0018820165, -0.0446416365, -0.0514740612, -0.0263275281, -0.0084487241,
            -0.0191633397, 0.0744115641, -0.0394933829, -0.0683315471, -0.0922040496]}]}'
    echo
}

# Best effort, and bounded: each request gives up after 20 s, so a dead cluster costs seconds.
show() { log "kubectl $*"; kc --request-timeout=20s "$@" || true; }
cmd_diagnose() {
    local pod
    show get pods -A -o wide
    show get events -A --sort-by=.lastTimestamp
    show -n seldon-system logs deploy/seldon-controller-manager --tail 100
    show -n promoter-system logs deploy/mlflow-seldon-promoter --tail 200
    show -n "${NAMESPACE}" get modelpromotions -o yaml
    show -n "${NAMESPACE}" describe seldondeployments
    for pod in $(kc --request-timeout=20s -n "${NAMESPACE}" get pods -o name 2>/dev/null || true); do
        show -n "${NAMESPACE}" logs "${pod}" --all-containers --tail 100
    done
}

cmd_down() {
    kind delete cluster --name "${CLUSTER}"
}

main() {
    case "${1:-}" in
        up | train | predict | diagnose | down) "cmd_$1" ;;
        promote) shift; cmd_promote "$@" ;;
        *) sed -n '2,10p' "$0" >&2; exit 2 ;;
    esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
