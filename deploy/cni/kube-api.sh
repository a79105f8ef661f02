# shellcheck shell=sh
# Shared by the moat-cni scripts (sourced): minimal Kubernetes API access with the
# pod's service account (the image carries curl and jq, not kubectl), and where
# moat keeps its policy.
SA=/var/run/secrets/kubernetes.io/serviceaccount
API="https://${KUBERNETES_SERVICE_HOST:?}:${KUBERNETES_SERVICE_PORT:-443}"

# kube_get PATH: GET the API path, print the JSON body; non-zero on HTTP errors.
kube_get() {
  curl -sS --fail --max-time 10 --cacert "$SA/ca.crt" \
    -H "Authorization: Bearer $(cat "$SA/token")" "$API$1"
}

# policy_path CONFLIST: where moat keeps the policy of this network
# (isolation.policyFile, else <dataDir>/<network name>/policy.json).
policy_path() {
  jq -r '. as $l | .plugins[] | select(.type == "moat")
         | .isolation.policyFile // "\(.dataDir // "/var/lib/cni/moat")/\($l.name)/policy.json"' "$1"
}
