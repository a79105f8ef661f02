# shellcheck shell=sh
# Minimal Kubernetes API access with the pod's service account (sourced by the
# moat-cni scripts; the image carries curl and jq, not kubectl).
SA=/var/run/secrets/kubernetes.io/serviceaccount
API="https://${KUBERNETES_SERVICE_HOST:?}:${KUBERNETES_SERVICE_PORT:-443}"

# kube_get PATH: GET the API path, print the JSON body; non-zero on HTTP errors.
kube_get() {
  curl -sS --fail --max-time 10 --cacert "$SA/ca.crt" \
    -H "Authorization: Bearer $(cat "$SA/token")" "$API$1"
}
