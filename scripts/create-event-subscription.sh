#!/usr/bin/env bash
# Creates (or updates) the Event Grid system topic on the source registry and the subscription
# that delivers Microsoft.ContainerRegistry.ImagePushed events from it to the function
# on_image_pushed. Both live in the registry's resource group and are made here with az, outside
# the azd-managed deployment: `azd down` deletes the app's resource group only and never reaches
# them (infra/README.md, "What azd down deletes").
#
# It must run AFTER the code is deployed: Event Grid validates an AzureFunction endpoint when the
# subscription is created, so the function has to exist. azure.yaml runs it as the azd postdeploy
# hook; it can also be run by hand after `func azure functionapp publish`. Every az call names the
# subscription (--subscription), never az's default one. Running it again changes nothing: a
# registry has at most one system topic, which is looked up by its source and reused, and the
# subscription create is a create-or-update.
#
# Inputs (environment variables; azd provides them from the environment and the Bicep outputs):
#   AZURE_SUBSCRIPTION_ID           subscription of the app and the registry (default: the one in FUNCTION_APP_ID)
#   FUNCTION_APP_ID                 resource id of the function app (or FUNCTION_APP_NAME + AZURE_RESOURCE_GROUP)
#   FUNCTION_APP_NAME               function app name (used to look up the id and to wait for the function)
#   AZURE_RESOURCE_GROUP            resource group of the function app
#   SOURCE_REGISTRY_NAME            the source registry
#   SOURCE_REGISTRY_RESOURCE_GROUP  its resource group (where the topic and the subscription go)
#   SOURCE_NAMESPACE                only subjects "<namespace>/..." are delivered (empty: every repository)
# Optional:
#   SYSTEM_TOPIC_NAME               name of the topic if the registry has none yet (default <registry>-events)
#   EVENT_SUBSCRIPTION_NAME         default registry-sync-image-pushed
#   FUNCTION_NAME                   default on_image_pushed
#   MAX_DELIVERY_ATTEMPTS           default 30 (1-30)
#   EVENT_TTL_MINUTES               default 1440 (1-1440)
#   WAIT_SECONDS                    how long to wait for the function to be indexed, default 300
#   DRY_RUN=1                       print the az commands that change something, look nothing up
#
# Flags override the environment: --subscription, --function-app-id, --function-app-name,
# --resource-group, --registry, --registry-resource-group, --system-topic, --namespace, --name,
# --dry-run.
set -euo pipefail

usage() {
  sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
  case "$1" in
    --subscription) AZURE_SUBSCRIPTION_ID="$2"; shift 2 ;;
    --function-app-id) FUNCTION_APP_ID="$2"; shift 2 ;;
    --function-app-name) FUNCTION_APP_NAME="$2"; shift 2 ;;
    --resource-group) AZURE_RESOURCE_GROUP="$2"; shift 2 ;;
    --registry) SOURCE_REGISTRY_NAME="$2"; shift 2 ;;
    --registry-resource-group) SOURCE_REGISTRY_RESOURCE_GROUP="$2"; shift 2 ;;
    --system-topic) SYSTEM_TOPIC_NAME="$2"; shift 2 ;;
    --namespace) SOURCE_NAMESPACE="$2"; shift 2 ;;
    --name) EVENT_SUBSCRIPTION_NAME="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

SUBSCRIPTION="${AZURE_SUBSCRIPTION_ID:-}"
FUNCTION_APP_ID="${FUNCTION_APP_ID:-}"
FUNCTION_APP_NAME="${FUNCTION_APP_NAME:-}"
AZURE_RESOURCE_GROUP="${AZURE_RESOURCE_GROUP:-}"
REGISTRY="${SOURCE_REGISTRY_NAME:-}"
REGISTRY_GROUP="${SOURCE_REGISTRY_RESOURCE_GROUP:-}"
SOURCE_NAMESPACE="${SOURCE_NAMESPACE:-}"
SYSTEM_TOPIC_NAME="${SYSTEM_TOPIC_NAME:-}"
EVENT_SUBSCRIPTION_NAME="${EVENT_SUBSCRIPTION_NAME:-registry-sync-image-pushed}"
FUNCTION_NAME="${FUNCTION_NAME:-on_image_pushed}"
MAX_DELIVERY_ATTEMPTS="${MAX_DELIVERY_ATTEMPTS:-30}"
EVENT_TTL_MINUTES="${EVENT_TTL_MINUTES:-1440}"
WAIT_SECONDS="${WAIT_SECONDS:-300}"
DRY_RUN="${DRY_RUN:-0}"

die() { echo "create-event-subscription: $*" >&2; exit 1; }
lower() { printf '%s' "$1" | tr '[:upper:]' '[:lower:]'; }

run() {
  if [ "$DRY_RUN" = "1" ]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

[ -n "$REGISTRY" ] || die "SOURCE_REGISTRY_NAME is not set (the source registry)"
[ -n "$REGISTRY_GROUP" ] || die "SOURCE_REGISTRY_RESOURCE_GROUP is not set (the registry's resource group)"
case "$MAX_DELIVERY_ATTEMPTS" in ''|*[!0-9]*) die "MAX_DELIVERY_ATTEMPTS must be a number" ;; esac
case "$EVENT_TTL_MINUTES" in ''|*[!0-9]*) die "EVENT_TTL_MINUTES must be a number" ;; esac
if [ "$MAX_DELIVERY_ATTEMPTS" -lt 1 ] || [ "$MAX_DELIVERY_ATTEMPTS" -gt 30 ]; then
  die "MAX_DELIVERY_ATTEMPTS must be 1-30"
fi
if [ "$EVENT_TTL_MINUTES" -lt 1 ] || [ "$EVENT_TTL_MINUTES" -gt 1440 ]; then
  die "EVENT_TTL_MINUTES must be 1-1440"
fi

if [ -n "$FUNCTION_APP_ID" ]; then
  # The id is /subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.Web/sites/<name>.
  FUNCTION_APP_ID="${FUNCTION_APP_ID%/}"
  case "$FUNCTION_APP_ID" in
    /subscriptions/*/resourceGroups/*/providers/Microsoft.Web/sites/*) ;;
    *) die "FUNCTION_APP_ID does not look like a function app resource id: $FUNCTION_APP_ID" ;;
  esac
  app_subscription="${FUNCTION_APP_ID#/subscriptions/}"
  app_subscription="${app_subscription%%/*}"
  if [ -z "$SUBSCRIPTION" ]; then
    SUBSCRIPTION="$app_subscription"
  elif [ "$(lower "$SUBSCRIPTION")" != "$(lower "$app_subscription")" ]; then
    die "FUNCTION_APP_ID is in subscription $app_subscription, not $SUBSCRIPTION (AZURE_SUBSCRIPTION_ID)"
  fi
  [ -n "$FUNCTION_APP_NAME" ] || FUNCTION_APP_NAME="${FUNCTION_APP_ID##*/}"
  if [ -z "$AZURE_RESOURCE_GROUP" ]; then
    AZURE_RESOURCE_GROUP="${FUNCTION_APP_ID#*/resourceGroups/}"
    AZURE_RESOURCE_GROUP="${AZURE_RESOURCE_GROUP%%/*}"
  fi
fi
[ -n "$SUBSCRIPTION" ] || die "AZURE_SUBSCRIPTION_ID is not set (the subscription of the app and the registry)"
if [ -z "$FUNCTION_APP_ID" ] && { [ -z "$FUNCTION_APP_NAME" ] || [ -z "$AZURE_RESOURCE_GROUP" ]; }; then
  die "set FUNCTION_APP_ID, or FUNCTION_APP_NAME and AZURE_RESOURCE_GROUP"
fi
if [ "$(lower "$AZURE_RESOURCE_GROUP")" = "$(lower "$REGISTRY_GROUP")" ]; then
  die "the app's resource group $AZURE_RESOURCE_GROUP is the source registry's: azd down would delete" \
    "the registry. Deploy the app into a resource group of its own (infra/README.md)."
fi

if [ "$DRY_RUN" != "1" ]; then
  command -v az >/dev/null 2>&1 || die "the Azure CLI (az) is required"
fi

if [ -z "$FUNCTION_APP_ID" ]; then
  if [ "$DRY_RUN" = "1" ]; then
    FUNCTION_APP_ID="/subscriptions/$SUBSCRIPTION/resourceGroups/$AZURE_RESOURCE_GROUP/providers/Microsoft.Web/sites/$FUNCTION_APP_NAME"
  else
    FUNCTION_APP_ID="$(az functionapp show --subscription "$SUBSCRIPTION" --name "$FUNCTION_APP_NAME" \
      --resource-group "$AZURE_RESOURCE_GROUP" --query id --output tsv)"
  fi
fi
ENDPOINT="$FUNCTION_APP_ID/functions/$FUNCTION_NAME"

# The registry's system topic: a registry has at most one; reuse it wherever it is.
topic_name=""
topic_group=""
if [ "$DRY_RUN" = "1" ]; then
  registry_id="<id of registry $REGISTRY>"
  registry_location="<location of registry $REGISTRY>"
else
  registry_id="$(az acr show --subscription "$SUBSCRIPTION" --name "$REGISTRY" \
    --resource-group "$REGISTRY_GROUP" --query id --output tsv)" \
    || die "registry $REGISTRY not found in resource group $REGISTRY_GROUP of subscription $SUBSCRIPTION"
  registry_location="$(az acr show --subscription "$SUBSCRIPTION" --name "$REGISTRY" \
    --resource-group "$REGISTRY_GROUP" --query location --output tsv)"
  topics="$(az eventgrid system-topic list --subscription "$SUBSCRIPTION" \
    --query "[].[source, name, resourceGroup]" --output tsv)"
  want="$(lower "$registry_id")"
  while IFS="$(printf '\t')" read -r source name group; do
    if [ -n "$source" ] && [ "$(lower "$source")" = "$want" ]; then
      topic_name="$name"
      topic_group="$group"
    fi
  done <<EOF
$topics
EOF
fi

if [ -n "$topic_name" ]; then
  if [ -n "$SYSTEM_TOPIC_NAME" ] && [ "$SYSTEM_TOPIC_NAME" != "$topic_name" ]; then
    die "registry $REGISTRY already has the system topic $topic_name (in $topic_group), and a registry" \
      "can have only one: unset SYSTEM_TOPIC_NAME or set it to $topic_name"
  fi
  echo "system topic $topic_name (in $topic_group) on registry $REGISTRY: reused" >&2
else
  topic_name="${SYSTEM_TOPIC_NAME:-$REGISTRY-events}"
  topic_group="$REGISTRY_GROUP"
  # Tagged, so that the cleanup (infra/README.md) can tell a topic made here from one that was there.
  run az eventgrid system-topic create --subscription "$SUBSCRIPTION" --name "$topic_name" \
    --resource-group "$topic_group" --location "$registry_location" \
    --topic-type Microsoft.ContainerRegistry.Registries --source "$registry_id" \
    --tags created-by=registry-sync --output none
fi

# The function appears in ARM only once the host has indexed the deployed package.
if [ "$DRY_RUN" != "1" ]; then
  deadline=$(( $(date +%s) + WAIT_SECONDS ))
  until az functionapp function show --subscription "$SUBSCRIPTION" --name "$FUNCTION_APP_NAME" \
      --resource-group "$AZURE_RESOURCE_GROUP" --function-name "$FUNCTION_NAME" \
      --query name --output tsv >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      die "function $FUNCTION_NAME not found in $FUNCTION_APP_NAME after ${WAIT_SECONDS}s: is the code deployed?"
    fi
    echo "waiting for $FUNCTION_NAME to be indexed in $FUNCTION_APP_NAME ..." >&2
    sleep 15
  done
fi

args=(
  --subscription "$SUBSCRIPTION"
  --name "$EVENT_SUBSCRIPTION_NAME"
  --resource-group "$topic_group"
  --system-topic-name "$topic_name"
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
run az eventgrid system-topic event-subscription create "${args[@]}" --output none
echo "event subscription $EVENT_SUBSCRIPTION_NAME on $topic_name -> $ENDPOINT" >&2
