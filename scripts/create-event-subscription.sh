#!/usr/bin/env bash
# Creates (or updates) the Event Grid subscription that delivers
# Microsoft.ContainerRegistry.ImagePushed events from the registry's system topic to the
# function on_image_pushed.
#
# It must run AFTER the code is deployed: Event Grid validates an AzureFunction endpoint when
# the subscription is created, so the function has to exist. azure.yaml runs it as the azd
# postdeploy hook; it can also be run by hand after `func azure functionapp publish`.
#
# Inputs (environment variables; azd provides the first group from the Bicep outputs):
#   FUNCTION_APP_ID               resource id of the function app (or FUNCTION_APP_NAME + AZURE_RESOURCE_GROUP)
#   FUNCTION_APP_NAME             function app name (used to look up the id and to wait for the function)
#   AZURE_RESOURCE_GROUP          resource group of the function app
#   SYSTEM_TOPIC_NAME             Event Grid system topic on the registry
#   SYSTEM_TOPIC_RESOURCE_GROUP   its resource group (the registry's)
#   SOURCE_NAMESPACE              only subjects "<namespace>/..." are delivered (empty: every repository)
# Optional:
#   EVENT_SUBSCRIPTION_NAME       default registry-sync-image-pushed
#   FUNCTION_NAME                 default on_image_pushed
#   MAX_DELIVERY_ATTEMPTS         default 30 (1-30)
#   EVENT_TTL_MINUTES             default 1440 (1-1440)
#   WAIT_SECONDS                  how long to wait for the function to be indexed, default 300
#   DRY_RUN=1                     print the az commands instead of running them
#
# Flags override the environment: --function-app-id, --function-app-name, --resource-group,
# --system-topic, --system-topic-resource-group, --namespace, --name, --dry-run.
set -euo pipefail

usage() {
  sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
  case "$1" in
    --function-app-id) FUNCTION_APP_ID="$2"; shift 2 ;;
    --function-app-name) FUNCTION_APP_NAME="$2"; shift 2 ;;
    --resource-group) AZURE_RESOURCE_GROUP="$2"; shift 2 ;;
    --system-topic) SYSTEM_TOPIC_NAME="$2"; shift 2 ;;
    --system-topic-resource-group) SYSTEM_TOPIC_RESOURCE_GROUP="$2"; shift 2 ;;
    --namespace) SOURCE_NAMESPACE="$2"; shift 2 ;;
    --name) EVENT_SUBSCRIPTION_NAME="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

FUNCTION_APP_ID="${FUNCTION_APP_ID:-}"
FUNCTION_APP_NAME="${FUNCTION_APP_NAME:-}"
AZURE_RESOURCE_GROUP="${AZURE_RESOURCE_GROUP:-}"
SYSTEM_TOPIC_NAME="${SYSTEM_TOPIC_NAME:-}"
SYSTEM_TOPIC_RESOURCE_GROUP="${SYSTEM_TOPIC_RESOURCE_GROUP:-}"
SOURCE_NAMESPACE="${SOURCE_NAMESPACE:-}"
EVENT_SUBSCRIPTION_NAME="${EVENT_SUBSCRIPTION_NAME:-registry-sync-image-pushed}"
FUNCTION_NAME="${FUNCTION_NAME:-on_image_pushed}"
MAX_DELIVERY_ATTEMPTS="${MAX_DELIVERY_ATTEMPTS:-30}"
EVENT_TTL_MINUTES="${EVENT_TTL_MINUTES:-1440}"
WAIT_SECONDS="${WAIT_SECONDS:-300}"
DRY_RUN="${DRY_RUN:-0}"

die() { echo "create-event-subscription: $*" >&2; exit 1; }

run() {
  if [ "$DRY_RUN" = "1" ]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

[ -n "$SYSTEM_TOPIC_NAME" ] || die "SYSTEM_TOPIC_NAME is not set (Bicep output SYSTEM_TOPIC_NAME)"
[ -n "$SYSTEM_TOPIC_RESOURCE_GROUP" ] || die "SYSTEM_TOPIC_RESOURCE_GROUP is not set (Bicep output SYSTEM_TOPIC_RESOURCE_GROUP)"
case "$MAX_DELIVERY_ATTEMPTS" in ''|*[!0-9]*) die "MAX_DELIVERY_ATTEMPTS must be a number" ;; esac
case "$EVENT_TTL_MINUTES" in ''|*[!0-9]*) die "EVENT_TTL_MINUTES must be a number" ;; esac
if [ "$MAX_DELIVERY_ATTEMPTS" -lt 1 ] || [ "$MAX_DELIVERY_ATTEMPTS" -gt 30 ]; then
  die "MAX_DELIVERY_ATTEMPTS must be 1-30"
fi
if [ "$EVENT_TTL_MINUTES" -lt 1 ] || [ "$EVENT_TTL_MINUTES" -gt 1440 ]; then
  die "EVENT_TTL_MINUTES must be 1-1440"
fi

if [ "$DRY_RUN" != "1" ]; then
  command -v az >/dev/null 2>&1 || die "the Azure CLI (az) is required"
fi

if [ -z "$FUNCTION_APP_ID" ]; then
  if [ -z "$FUNCTION_APP_NAME" ] || [ -z "$AZURE_RESOURCE_GROUP" ]; then
    die "set FUNCTION_APP_ID, or FUNCTION_APP_NAME and AZURE_RESOURCE_GROUP"
  fi
  if [ "$DRY_RUN" = "1" ]; then
    FUNCTION_APP_ID="/subscriptions/<subscription>/resourceGroups/$AZURE_RESOURCE_GROUP/providers/Microsoft.Web/sites/$FUNCTION_APP_NAME"
  else
    FUNCTION_APP_ID="$(az functionapp show --name "$FUNCTION_APP_NAME" --resource-group "$AZURE_RESOURCE_GROUP" --query id --output tsv)"
  fi
fi
# The id is /subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.Web/sites/<name>.
FUNCTION_APP_ID="${FUNCTION_APP_ID%/}"
case "$FUNCTION_APP_ID" in
  /subscriptions/*/resourceGroups/*/providers/Microsoft.Web/sites/*) ;;
  *) die "FUNCTION_APP_ID does not look like a function app resource id: $FUNCTION_APP_ID" ;;
esac
[ -n "$FUNCTION_APP_NAME" ] || FUNCTION_APP_NAME="${FUNCTION_APP_ID##*/}"
if [ -z "$AZURE_RESOURCE_GROUP" ]; then
  AZURE_RESOURCE_GROUP="${FUNCTION_APP_ID#*/resourceGroups/}"
  AZURE_RESOURCE_GROUP="${AZURE_RESOURCE_GROUP%%/*}"
fi

ENDPOINT="$FUNCTION_APP_ID/functions/$FUNCTION_NAME"

# The function appears in ARM only once the host has indexed the deployed package.
if [ "$DRY_RUN" != "1" ]; then
  deadline=$(( $(date +%s) + WAIT_SECONDS ))
  until az functionapp function show --name "$FUNCTION_APP_NAME" --resource-group "$AZURE_RESOURCE_GROUP" \
      --function-name "$FUNCTION_NAME" --query name --output tsv >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      die "function $FUNCTION_NAME not found in $FUNCTION_APP_NAME after ${WAIT_SECONDS}s: is the code deployed?"
    fi
    echo "waiting for $FUNCTION_NAME to be indexed in $FUNCTION_APP_NAME ..." >&2
    sleep 15
  done
fi

args=(
  --name "$EVENT_SUBSCRIPTION_NAME"
  --resource-group "$SYSTEM_TOPIC_RESOURCE_GROUP"
  --system-topic-name "$SYSTEM_TOPIC_NAME"
  --endpoint-type azurefunction
  --endpoint "$ENDPOINT"
  --included-event-types Microsoft.ContainerRegistry.ImagePushed
  --event-delivery-schema eventgridschema
  --max-delivery-attempts "$MAX_DELIVERY_ATTEMPTS"
  --event-ttl "$EVENT_TTL_MINUTES"
  --max-events-per-batch 1
)
if [ -n "$SOURCE_NAMESPACE" ]; then
  # Subjects are "<repository>:<tag>"; the trailing slash keeps "giantswarm2/..." out.
  args+=(--subject-begins-with "${SOURCE_NAMESPACE%/}/")
fi

# "create" is a create-or-update (PUT): running the hook on every deploy is safe.
run az eventgrid system-topic event-subscription create "${args[@]}"
echo "event subscription $EVENT_SUBSCRIPTION_NAME on $SYSTEM_TOPIC_NAME -> $ENDPOINT" >&2
