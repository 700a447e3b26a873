#!/usr/bin/env bash
# Refuses a deployment that would put the source registry within reach of `azd down`.
#
# `azd down` deletes the app's resource group (AZURE_RESOURCE_GROUP) with everything in it. This
# check passes only when
#   - the source registry's resource group is not the app's (compared case-insensitively);
#   - the registry exists in the deployment's subscription, in the resource group named for it;
#   - the app's resource group holds no container registry at all.
# It warns, without refusing, when no CanNotDelete (or ReadOnly) lock protects the registry
# (infra/README.md: "Protect the source registry").
#
# azure.yaml runs it as the azd preprovision hook. Before `az deployment group create`, run it by
# hand with the same values. It only reads (az acr show, az group exists, az resource list,
# az lock list), always in the given subscription (--subscription), never in az's default one.
#
# Inputs (environment variables; azd provides them from the environment, flags override):
#   AZURE_SUBSCRIPTION_ID            --subscription             subscription of the deployment
#   AZURE_RESOURCE_GROUP             --resource-group           the app's resource group
#   SOURCE_REGISTRY_NAME             --registry                 the source registry
#   SOURCE_REGISTRY_RESOURCE_GROUP   --registry-resource-group  its resource group
set -euo pipefail

usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
  case "$1" in
    --subscription) AZURE_SUBSCRIPTION_ID="$2"; shift 2 ;;
    --resource-group) AZURE_RESOURCE_GROUP="$2"; shift 2 ;;
    --registry) SOURCE_REGISTRY_NAME="$2"; shift 2 ;;
    --registry-resource-group) SOURCE_REGISTRY_RESOURCE_GROUP="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

die() { echo "check-source-registry: $*" >&2; exit 1; }
warn() { echo "check-source-registry: warning: $*" >&2; }
lower() { printf '%s' "$1" | tr '[:upper:]' '[:lower:]'; }

missing=""
for name in AZURE_SUBSCRIPTION_ID AZURE_RESOURCE_GROUP SOURCE_REGISTRY_NAME SOURCE_REGISTRY_RESOURCE_GROUP; do
  [ -n "${!name:-}" ] || missing="$missing $name"
done
if [ -n "$missing" ]; then
  {
    echo "check-source-registry: not set:$missing"
    echo "  azd asks for the subscription and the resource group only after this check; set every"
    echo "  value in the environment first (infra/README.md, \"Deploy with azd\"):"
    for name in $missing; do echo "    azd env set $name <value>"; done
  } >&2
  exit 1
fi

SUBSCRIPTION="$AZURE_SUBSCRIPTION_ID"
APP_GROUP="$AZURE_RESOURCE_GROUP"
REGISTRY="$SOURCE_REGISTRY_NAME"
REGISTRY_GROUP="$SOURCE_REGISTRY_RESOURCE_GROUP"

if [ "$(lower "$APP_GROUP")" = "$(lower "$REGISTRY_GROUP")" ]; then
  die "the app's resource group $APP_GROUP is the source registry's: azd down deletes that whole" \
    "group, the registry with it. Deploy the app into a resource group of its own" \
    "(azd env set AZURE_RESOURCE_GROUP <another group>)."
fi

command -v az >/dev/null 2>&1 || die "the Azure CLI (az) is required"

registry_id="$(az acr show --subscription "$SUBSCRIPTION" --name "$REGISTRY" --query id --output tsv)" \
  || die "registry $REGISTRY: not found in subscription $SUBSCRIPTION (az acr show failed)"
[ -n "$registry_id" ] || die "registry $REGISTRY: not found in subscription $SUBSCRIPTION"
actual_group="${registry_id#*/[Rr]esource[Gg]roups/}"
actual_group="${actual_group%%/*}"
if [ "$(lower "$actual_group")" = "$(lower "$APP_GROUP")" ]; then
  die "registry $REGISTRY is in $actual_group, the app's resource group: azd down would delete it." \
    "Deploy the app into a resource group of its own."
fi
if [ "$(lower "$actual_group")" != "$(lower "$REGISTRY_GROUP")" ]; then
  die "registry $REGISTRY is in resource group $actual_group, not $REGISTRY_GROUP" \
    "(SOURCE_REGISTRY_RESOURCE_GROUP)"
fi

exists="$(az group exists --subscription "$SUBSCRIPTION" --name "$APP_GROUP" --output tsv)" \
  || die "az group exists failed for $APP_GROUP"
if [ "$exists" = "true" ]; then
  held="$(az resource list --subscription "$SUBSCRIPTION" --resource-group "$APP_GROUP" \
    --resource-type Microsoft.ContainerRegistry/registries --query "[].name" --output tsv)" \
    || die "az resource list failed for $APP_GROUP"
  if [ -n "$held" ]; then
    die "resource group $APP_GROUP holds container registries ($(echo "$held" | tr '\n' ' ' | sed 's/ $//'))," \
      "and azd down deletes everything in it. Deploy the app into a resource group of its own."
  fi
fi

if locks="$(az lock list --subscription "$SUBSCRIPTION" --resource "$registry_id" \
    --query "[?level=='CanNotDelete' || level=='ReadOnly'].name" --output tsv 2>/dev/null)"; then
  if [ -z "$locks" ]; then
    warn "no CanNotDelete lock on registry $REGISTRY: ask its owner to add one" \
      "(infra/README.md, \"Protect the source registry\")"
  fi
else
  warn "could not read the locks of registry $REGISTRY (needs Microsoft.Authorization/locks/read)"
fi

echo "check-source-registry: registry $REGISTRY ($actual_group) is outside the app's resource group $APP_GROUP" >&2
