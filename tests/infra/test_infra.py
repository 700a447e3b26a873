"""Infrastructure as code: infra/*.bicep parsed with pycep, checkov on infra/, the azd project,
its parameters file, the hooks (the source registry check and the Event Grid script), and what
the documentation promises about `azd down`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pycep import BicepParser

from sync_core.config.load import load_config
from sync_core.config.model import Compare
from sync_core.config.registries import ALIBABA_DEFAULTS, DOCKER_HUB_DEFAULTS
from sync_core.config.settings import APP_SETTINGS
from sync_core.jobs.syncer import BLOB_CONCURRENCY
from tests.harness.paths import ROOT
from tests.harness.secret_values import looks_like_secret

INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
NETWORK_MODULE = INFRA / "modules" / "private-network.bicep"
PARAMETERS = INFRA / "main.parameters.json"
TOOLS_VENV = ROOT / ".venv-tools"
CHECKOV = TOOLS_VENV / "bin" / "checkov"
SCRIPT = ROOT / "scripts" / "create-event-subscription.sh"
CHECK_SCRIPT = ROOT / "scripts" / "check-source-registry.sh"
READMES = [ROOT / "README.md", INFRA / "README.md"]

# Never app settings in Azure: direct credentials (Key Vault instead), a storage connection
# string (identity instead), and settings that Flex Consumption rejects.
FORBIDDEN_SETTINGS = {
    "SOURCE_USERNAME",
    "SOURCE_PASSWORD",
    "TARGET_USERNAME",
    "TARGET_PASSWORD",
    "AzureWebJobsStorage",
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "APPINSIGHTS_INSTRUMENTATIONKEY",
}

ROLE_STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
ROLE_STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
ROLE_STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
ROLE_KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
ROLE_MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"

# Resource types and the API versions used; each is known to checkov and to ARM.
KNOWN_API_VERSIONS = {
    "Microsoft.Web/serverfarms": "2023-12-01",
    "Microsoft.Web/sites": "2023-12-01",
    "Microsoft.Web/sites/basicPublishingCredentialsPolicies": "2023-12-01",
    "Microsoft.Storage/storageAccounts": "2023-05-01",
    "Microsoft.Storage/storageAccounts/blobServices": "2023-05-01",
    "Microsoft.Storage/storageAccounts/blobServices/containers": "2023-05-01",
    "Microsoft.Storage/storageAccounts/queueServices": "2023-05-01",
    "Microsoft.Storage/storageAccounts/queueServices/queues": "2023-05-01",
    "Microsoft.Storage/storageAccounts/tableServices": "2023-05-01",
    "Microsoft.KeyVault/vaults": "2023-07-01",
    "Microsoft.OperationalInsights/workspaces": "2022-10-01",
    "Microsoft.Insights/components": "2020-02-02",
    "Microsoft.Insights/diagnosticSettings": "2021-05-01-preview",
    "Microsoft.Authorization/roleAssignments": "2022-04-01",
    "Microsoft.ManagedIdentity/userAssignedIdentities": "2023-01-31",
    "Microsoft.ContainerRegistry/registries": "2023-07-01",
    "Microsoft.Network/virtualNetworks": "2024-05-01",
    "Microsoft.Network/privateEndpoints": "2024-05-01",
    "Microsoft.Network/privateEndpoints/privateDnsZoneGroups": "2024-05-01",
    "Microsoft.Network/privateDnsZones": "2020-06-01",
    "Microsoft.Network/privateDnsZones/virtualNetworkLinks": "2020-06-01",
}
# Diagnostic settings have no GA API version with category groups: Microsoft's Bicep reference
# documents 2021-05-01-preview (the only GA one is 2016-09-01). Every other type is GA.
PREVIEW_ALLOWED = {"Microsoft.Insights/diagnosticSettings"}


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def parse(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource body, unwrapping `= if (cond) {...}` and `= [for ...: {...}]`."""
    config = resource["config"]
    if "condition" in config and "config" in config:
        return config["config"]
    return config


def of_type(tree: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in tree.get("resources", {}).items() if r["type"] == rtype}


def only(tree: dict[str, Any], rtype: str) -> dict[str, Any]:
    found = of_type(tree, rtype)
    assert len(found) == 1, f"expected one {rtype}, found {sorted(found)}"
    return next(iter(found.values()))


def name_of(tree: dict[str, Any], rtype: str) -> str:
    only(tree, rtype)
    return next(iter(of_type(tree, rtype)))


def accessor(node: Any) -> str | None:
    """`a.b.c` (a pycep property_accessor tree) as a dotted string, else None."""
    if isinstance(node, str):
        return node
    if isinstance(node, dict) and node.get("operator", {}).get("type") == "property_accessor":
        ops = node["operator"]["operands"]
        left, right = accessor(ops["operand_1"]), accessor(ops["operand_2"])
        if left is not None and right is not None:
            return f"{left}.{right}"
    return None


def resolve(tree: dict[str, Any], node: Any) -> Any:
    """A plain identifier naming a variable or a parameter -> its value / default."""
    if isinstance(node, str):
        if node in tree.get("variables", {}):
            return tree["variables"][node]["value"]
        if node in tree.get("parameters", {}):
            return tree["parameters"][node].get("default")
    return node


def conditional(node: Any) -> dict[str, Any]:
    """The operands of `cond ? a : b`."""
    assert isinstance(node, dict) and node.get("operator", {}).get("type") == "conditional", node
    return node["operator"]["operands"]


def string_leaves(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from string_leaves(value)
    elif isinstance(node, list):
        for value in node:
            yield from string_leaves(value)


def bicep_code(path: Path) -> str:
    """The file without its // comments (what ARM gets)."""
    return "\n".join(re.sub(r"(^|\s)//.*$", "", line) for line in path.read_text().splitlines())


@pytest.fixture(scope="module")
def main() -> dict[str, Any]:
    return parse(MAIN)


@pytest.fixture(scope="module")
def network() -> dict[str, Any]:
    return parse(NETWORK_MODULE)


@pytest.fixture(scope="module")
def site(main: dict[str, Any]) -> dict[str, Any]:
    return body(only(main, "Microsoft.Web/sites"))


@pytest.fixture(scope="module")
def identity(main: dict[str, Any]) -> str:
    return name_of(main, "Microsoft.ManagedIdentity/userAssignedIdentities")


@pytest.fixture(scope="module")
def app_settings(site: dict[str, Any]) -> dict[str, Any]:
    settings = site["properties"]["siteConfig"]["appSettings"]
    names = [s["name"] for s in settings]
    assert len(names) == len(set(names)), "duplicate app settings"
    return {s["name"]: s["value"] for s in settings}


# ------------------------------------------------------------------------------------------
# parsing
# ------------------------------------------------------------------------------------------


def test_every_bicep_file_parses() -> None:
    files = sorted(INFRA.rglob("*.bicep"))
    assert MAIN in files and NETWORK_MODULE in files
    for path in files:
        tree = parse(path)
        assert tree.get("resources"), f"{path} declares no resources"


def test_api_versions_are_known_and_ga(main: dict[str, Any], network: dict[str, Any]) -> None:
    for tree in (main, network):
        for name, resource in tree["resources"].items():
            rtype, version = resource["type"], resource["api_version"]
            assert "preview" not in version or rtype in PREVIEW_ALLOWED, name
            assert KNOWN_API_VERSIONS.get(rtype) == version, f"{name}: {rtype}@{version}"


def test_modules_resolve(main: dict[str, Any]) -> None:
    for name, module in main.get("modules", {}).items():
        assert (INFRA / module["detail"]["path"]).is_file(), name


# ------------------------------------------------------------------------------------------
# the source registry: never in the app's resource group, nothing deployed into its group
# ------------------------------------------------------------------------------------------


def evaluate_guard(main: dict[str, Any], node: Any, env: dict[str, str]) -> Any:
    """Evaluate the registry group check as ARM would, for an app group and a parameter value."""
    if isinstance(node, str):
        return env.get(node, node)
    if "function" in node:
        fn = node["function"]
        if fn["type"] == "to_lower":
            return str(evaluate_guard(main, fn["parameters"]["string_to_change"], env)).lower()
        if fn["type"] == "fail":
            raise ValueError(fn["parameters"]["arg_1"])
    operator = node.get("operator", {})
    if operator.get("type") == "property_accessor":
        ops = operator["operands"]
        assert ops["operand_1"]["function"]["type"] == "resource_group", ops
        assert ops["operand_1"]["function"]["parameters"]["resource_group_name"] is None, "this group"
        assert ops["operand_2"] == "name"
        return env["resourceGroup().name"]
    if operator.get("type") == "equals":
        ops = operator["operands"]
        return evaluate_guard(main, ops["operand_1"], env) == evaluate_guard(main, ops["operand_2"], env)
    if operator.get("type") == "conditional":
        ops = operator["operands"]
        chosen = evaluate_guard(main, ops["condition"], env)
        return evaluate_guard(main, ops["true_value" if chosen else "false_value"], env)
    raise AssertionError(f"unsupported expression in the registry group check: {node}")


def test_registry_group_is_a_required_parameter(main: dict[str, Any]) -> None:
    for name in ("acrName", "acrResourceGroupName"):
        param = main["parameters"][name]
        assert param["type"] == "string" and param.get("default") is None, f"{name} must have no default"
        min_length = [d["argument"] for d in param["decorators"] if d["type"] == "min_length"]
        assert min_length and min_length[0] >= 1, f"{name}: an empty value must not pass"


@pytest.mark.parametrize(
    ("app_group", "registry_group", "refused"),
    [
        ("rg-registry-sync", "rg-gsoci", False),
        ("rg-gsoci", "rg-gsoci", True),
        ("RG-GSOCI", "rg-gsoci", True),  # resource group names are case-insensitive
        ("rg-gsoci", "Rg-Gsoci", True),
    ],
)
def test_the_template_fails_when_the_registry_group_is_the_app_group(
    main: dict[str, Any], app_group: str, registry_group: str, refused: bool
) -> None:
    """fail() in the value every resource carries: ARM's validation stops the deployment before
    anything is created (a registry in the app's group would go with the next `azd down`)."""
    guard = main["variables"]["sourceRegistryResourceGroup"]["value"]
    env = {"acrResourceGroupName": registry_group, "resourceGroup().name": app_group}
    if refused:
        with pytest.raises(ValueError, match="own resource group"):
            evaluate_guard(main, guard, env)
    else:
        assert evaluate_guard(main, guard, env) == registry_group


def test_every_resource_carries_the_registry_group_check(
    main: dict[str, Any], network: dict[str, Any]
) -> None:
    """The checked value is in the tags of every resource, so no resource can be deployed
    without ARM evaluating it (and the existing registry is read through it)."""
    common = main["variables"]["commonTags"]["value"]["function"]
    assert common["type"] == "union"
    parts = [resolve(main, part) for part in common["parameters"].values()]
    assert "${sourceRegistryResourceGroup}/${acrName}" in string_leaves(parts)
    registry = only(main, "Microsoft.ContainerRegistry/registries")
    assert registry["config"]["scope"]["function"]["parameters"]["resource_group_name"] == (
        "sourceRegistryResourceGroup"
    )
    for name, resource in main["resources"].items():
        config = body(resource)
        if resource["existing"] or "parent" in config or "scope" in config:
            continue  # existing, child and extension resources: their parents carry it
        tags = config.get("tags")
        if isinstance(tags, dict) and "function" in tags:
            tags = tags["function"]["parameters"]["arg_1"]  # union(commonTags, {...})
        assert tags == "commonTags", f"{name} lacks the checked tags"
    for name, module in main["modules"].items():
        assert body(module)["params"]["tags"] == "commonTags", name
    for name, resource in network["resources"].items():
        if not resource["existing"] and "parent" not in body(resource):
            assert body(resource)["tags"] == "tags", f"module resource {name} drops the tags"


def test_nothing_is_deployed_into_the_registry_group(main: dict[str, Any]) -> None:
    """`azd down` must find nothing of ours in the registry's group: no module and no resource
    is scoped there (the existing registry is only read); the system topic and the event
    subscription are made by the postdeploy hook, outside the deployment."""
    for name, module in main["modules"].items():
        assert "scope" not in body(module), f"module {name} is deployed into another scope"
    for name, resource in main["resources"].items():
        scope = body(resource).get("scope")
        if isinstance(scope, dict):
            assert resource["existing"], f"{name} is created in another scope: {scope}"
        elif scope is not None:
            assert scope in main["resources"], f"{name}: scope {scope} is not one of ours"
    for path in INFRA.rglob("*.bicep"):
        code = bicep_code(path)
        assert "Microsoft.EventGrid/" not in code, f"{path}: Event Grid resources belong to the hook"
        assert "Microsoft.Authorization/locks" not in code, f"{path}: the registry lock is its owner's"
        assert not re.search(r"\b(subscription|managementGroup|tenant)\(\)\s*$", code, re.M)
        assert "targetScope = 'resourceGroup'" in code, path


# ------------------------------------------------------------------------------------------
# plan and function app
# ------------------------------------------------------------------------------------------


def test_flex_consumption_plan(main: dict[str, Any]) -> None:
    plan = body(only(main, "Microsoft.Web/serverfarms"))
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True, "Linux"


def test_function_app_basics(main: dict[str, Any], site: dict[str, Any]) -> None:
    assert site["kind"] == "functionapp,linux"
    props = site["properties"]
    assert props["httpsOnly"] is True
    assert accessor(props["serverFarmId"]) == f"{name_of(main, 'Microsoft.Web/serverfarms')}.id"
    assert props["siteConfig"]["minTlsVersion"] == "1.2"
    # azd finds the app to deploy the "sync" service to by this tag.
    assert "'azd-service-name': 'sync'" in MAIN.read_text()


def test_no_site_config_that_flex_consumption_rejects(site: dict[str, Any]) -> None:
    """Flex Consumption refuses these siteConfig properties (ARM error 51021): FTP is off through
    the publishing policy instead, the runtime is functionAppConfig's."""
    rejected = {"ftpsState", "linuxFxVersion", "alwaysOn", "use32BitWorkerProcess", "netFrameworkVersion"}
    assert not rejected & set(site["properties"]["siteConfig"])
    for path in INFRA.rglob("*.bicep"):
        assert "ftpsState" not in bicep_code(path), path


def worker_tier_python() -> str:
    m = re.search(r"^WORKER_PY_VERSION := (\S+)$", (ROOT / "mk" / "worker.mk").read_text(), re.M)
    assert m, "WORKER_PY_VERSION not found in mk/worker.mk"
    return m.group(1)


def test_function_app_config(main: dict[str, Any], site: dict[str, Any], identity: str) -> None:
    fac = site["properties"]["functionAppConfig"]
    # The Python the worker-contract tier runs (mk/worker.mk); tests/worker checks its interpreter.
    assert fac["runtime"] == {"name": "python", "version": worker_tier_python()}
    scale = fac["scaleAndConcurrency"]
    assert resolve(main, scale["instanceMemoryMB"]) == 2048
    assert 1 <= resolve(main, scale["maximumInstanceCount"]) <= 1000
    storage = fac["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    assert accessor(storage["authentication"]["userAssignedIdentityResourceId"]) == f"{identity}.id"
    container = body(only(main, "Microsoft.Storage/storageAccounts/blobServices/containers"))
    assert storage["value"].endswith("${" + container["name"] + "}")


def test_the_fleet_stays_within_the_target_s_request_budget(
    main: dict[str, Any], site: dict[str, Any], app_settings: dict[str, Any]
) -> None:
    """docs/rate-limits.md: each instance (one worker process) has its own budget, so the fleet
    sends at most maximumInstanceCount x TARGET_REQUESTS_PER_SECOND; by default within the
    strictest fleet budget of a known registry (Docker Hub, Alibaba: the default target may be
    either)."""
    host = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    instances = resolve(
        main, site["properties"]["functionAppConfig"]["scaleAndConcurrency"]["maximumInstanceCount"]
    )
    rate = float(resolve(main, app_settings["TARGET_REQUESTS_PER_SECOND"]))
    concurrent = int(resolve(main, app_settings["TARGET_CONCURRENT_REQUESTS"]))
    copies = resolve(main, app_settings["SYNC_CONCURRENCY"]["function"]["parameters"]["value_to_convert"])
    known = (DOCKER_HUB_DEFAULTS, ALIBABA_DEFAULTS)
    fleet_budget = min(d.fleet_requests_per_second for d in known if d.fleet_requests_per_second)
    assert instances * rate <= fleet_budget, "the fleet would send more than the registry allows"
    # one instance never goes beyond what one process may send alone
    assert rate <= min(d.requests_per_second for d in known if d.requests_per_second)
    assert concurrent <= min(d.concurrent_requests for d in known if d.concurrent_requests)
    # invocations at once per instance: an event's tag message can run beside a repository
    # message (and its requests go first in the budget)
    messages = host["batchSize"] + host["newBatchThreshold"]
    assert messages >= 2
    # the budget, not the thread count, is what binds: an instance has more copies and blob
    # transfers than requests it may have in flight
    assert messages * copies * (1 + BLOB_CONCURRENCY) >= concurrent
    # the source has no budget unless one is set (ACR's ReadOps limit is per registry)
    assert resolve(main, app_settings["SOURCE_REQUESTS_PER_SECOND"]) == ""


def test_no_basic_auth_publishing(main: dict[str, Any]) -> None:
    policies = of_type(main, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert sorted(body(p)["name"] for p in policies.values()) == ["ftp", "scm"]
    assert all(body(p)["properties"]["allow"] is False for p in policies.values())


# ------------------------------------------------------------------------------------------
# identity: user-assigned, its roles exist before the app
# ------------------------------------------------------------------------------------------


def role_assignments(main: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """role definition id -> (symbolic name, assignment body)."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, resource in of_type(main, "Microsoft.Authorization/roleAssignments").items():
        config = body(resource)
        role_def = config["properties"]["roleDefinitionId"]["function"]
        assert role_def["type"] == "subscription_resource_id", name
        assert role_def["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions", name
        role_id = resolve(main, role_def["parameters"]["resource_name_1"])
        found[role_id] = (name, config)
    return found


def test_the_app_runs_as_a_user_assigned_identity(site: dict[str, Any], identity: str) -> None:
    assert site["identity"]["type"] == "UserAssigned"
    assert list(site["identity"]["userAssignedIdentities"]) == ["'${" + identity + ".id}'"]


@pytest.mark.parametrize(
    ("role_id", "scope_type"),
    [
        (ROLE_STORAGE_BLOB_DATA_OWNER, "Microsoft.Storage/storageAccounts"),
        (ROLE_STORAGE_QUEUE_DATA_CONTRIBUTOR, "Microsoft.Storage/storageAccounts"),
        (ROLE_STORAGE_TABLE_DATA_CONTRIBUTOR, "Microsoft.Storage/storageAccounts"),
        (ROLE_KEY_VAULT_SECRETS_USER, "Microsoft.KeyVault/vaults"),
        (ROLE_MONITORING_METRICS_PUBLISHER, "Microsoft.Insights/components"),
    ],
)
def test_role_assignment_for_app_identity_before_the_app(
    main: dict[str, Any], site: dict[str, Any], identity: str, role_id: str, scope_type: str
) -> None:
    assignments = role_assignments(main)
    assert role_id in assignments, f"no role assignment with role {role_id}"
    name, config = assignments[role_id]
    assert accessor(config["properties"]["principalId"]) == f"{identity}.properties.principalId"
    assert config["properties"]["principalType"] == "ServicePrincipal"
    assert config["scope"] in of_type(main, scope_type), f"role {role_id} not scoped to the {scope_type}"
    # Deterministic name: redeploying does not create duplicates.
    assert config["name"]["function"]["type"] == "guid"
    # Made before the app (the first package upload needs them), not after it.
    assert name in site["dependsOn"], f"the app does not wait for {name}"
    site_name = name_of(main, "Microsoft.Web/sites")
    assert not any(site_name in leaf for leaf in string_leaves(config)), f"{name} waits for the app"


# ------------------------------------------------------------------------------------------
# app settings
# ------------------------------------------------------------------------------------------


def test_app_settings_complete(main: dict[str, Any], app_settings: dict[str, Any], identity: str) -> None:
    missing = [s for s in APP_SETTINGS if s not in app_settings]
    assert not missing, f"app settings missing from main.bicep: {missing}"
    storage_name = name_of(main, "Microsoft.Storage/storageAccounts")
    assert accessor(app_settings["AzureWebJobsStorage__accountName"]) == f"{storage_name}.name"
    insights = name_of(main, "Microsoft.Insights/components")
    assert accessor(app_settings["APPLICATIONINSIGHTS_CONNECTION_STRING"]) == (
        f"{insights}.properties.ConnectionString"
    )
    vault = name_of(main, "Microsoft.KeyVault/vaults")
    assert accessor(app_settings["KEY_VAULT_URL"]) == f"{vault}.properties.vaultUri"


def test_app_settings_name_the_user_assigned_identity(app_settings: dict[str, Any], identity: str) -> None:
    """A user-assigned identity is used only where its client id is given: the host's storage
    connection, DefaultAzureCredential (sync_core/secrets.py reads Key Vault with it; it takes
    the client id from AZURE_CLIENT_ID) and the Application Insights exporter."""
    client_id = f"{identity}.properties.clientId"
    assert app_settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert accessor(app_settings["AzureWebJobsStorage__clientId"]) == client_id
    assert accessor(app_settings["AZURE_CLIENT_ID"]) == client_id
    assert app_settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == (
        "ClientId=${" + client_id + "};Authorization=AAD"
    )


def test_app_settings_defaults(main: dict[str, Any], app_settings: dict[str, Any]) -> None:
    assert resolve(main, app_settings["SYNC_QUEUE"]) == "sync-work"
    assert resolve(main, app_settings["SYNC_SCHEDULE"]) == "0 */15 * * * *"
    assert resolve(main, app_settings["SOURCE_KIND"]) == "acr"
    assert resolve(main, app_settings["SYNC_COMPARE"]) in {c.value for c in Compare}
    for name in APP_SETTINGS:
        if name.endswith("_SECRET"):
            secret_name = resolve(main, app_settings[name])
            assert re.fullmatch(r"[0-9a-zA-Z-]{1,127}", secret_name), f"{name}: {secret_name!r}"


# Properties that exist only once deployed, for evaluating the app settings of a deployment.
RUNTIME_VALUES = {
    "registry.properties.loginServer": "gsoci.azurecr.io",
    "keyVault.properties.vaultUri": "https://kvregsyncexample.vault.azure.net/",
    "storage.name": "stregsyncexample",
    "appInsights.properties.ConnectionString": "IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/",
    "appIdentity.properties.clientId": "00000000-0000-0000-0000-0000000000c1",
}


def evaluate(node: Any, params: dict[str, Any]) -> Any:
    """Evaluate the small subset of Bicep expressions used in the app settings."""
    if isinstance(node, (bool, int, float)):
        return node
    if isinstance(node, str):
        return params.get(node, node)
    path = accessor(node)
    if path is not None:
        assert path in RUNTIME_VALUES, f"no runtime value for {path}"
        return RUNTIME_VALUES[path]
    if "function" in node and node["function"]["type"] == "string":
        value = evaluate(node["function"]["parameters"]["value_to_convert"], params)
        return str(value).lower() if isinstance(value, bool) else str(value)
    operator = node.get("operator", {})
    if operator.get("type") == "conditional":
        ops = operator["operands"]
        condition = ops["condition"]["function"]
        assert condition["type"] == "empty", condition
        chosen = evaluate(condition["parameters"]["item_to_test"], params) in ("", None, [], {})
        return evaluate(ops["true_value" if chosen else "false_value"], params)
    raise AssertionError(f"unsupported expression in app settings: {node}")


def deployed_settings(main: dict[str, Any], app_settings: dict[str, Any], overrides: dict[str, Any]) -> dict:
    params = {name: p.get("default") for name, p in main["parameters"].items()}
    params.update(overrides)
    return {name: evaluate(value, params) for name, value in app_settings.items()}


PLACEHOLDER = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:=([^}]*))?\}")


def azd_parameters(main: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """The parameter values azd passes from main.parameters.json in environment ``env``: each
    ${VAR} substituted (unset: empty); an empty value is left out where the template has a
    default (the default applies); "true"/"false" become booleans for bool parameters."""
    values: dict[str, Any] = {}
    for name, entry in json.loads(PARAMETERS.read_text())["parameters"].items():
        value = entry["value"]
        if isinstance(value, str):
            value = PLACEHOLDER.sub(lambda m: env.get(m.group(1), m.group(2) or ""), value)
            param = main["parameters"][name]
            if value == "" and param.get("default") is not None:
                continue
            if param["type"] == "bool":
                assert value in ("true", "false"), f"{name}: {value!r} is no bool"
                value = value == "true"
        values[name] = value
    return values


AZD_ENV = {
    "AZURE_ENV_NAME": "registry-sync-prod",
    "AZURE_LOCATION": "westeurope",
    "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
    "AZURE_RESOURCE_GROUP": "rg-registry-sync",
    "SOURCE_REGISTRY_NAME": "gsoci",
    "SOURCE_REGISTRY_RESOURCE_GROUP": "rg-gsoci",
    "SOURCE_NAMESPACE": "giantswarm",
    "TARGET_REGISTRY": "registry-1.docker.io",
    "TARGET_NAMESPACE": "giantswarm",
}


@pytest.mark.parametrize("source", ["defaults", "azd environment"])
def test_deployed_settings_are_a_valid_app_configuration(
    main: dict[str, Any], app_settings: dict[str, Any], source: str
) -> None:
    """The app settings a deployment produces load with the app's own configuration loader."""
    overrides: dict[str, Any] = {"acrName": "gsoci", "targetRegistry": "registry-1.docker.io"}
    if source == "azd environment":
        overrides = azd_parameters(main, AZD_ENV)
    env = deployed_settings(main, app_settings, overrides)
    assert all(isinstance(v, str) for v in env.values()), env
    config = load_config(env)
    assert config.queue == "sync-work"
    assert config.key_vault_url == RUNTIME_VALUES["keyVault.properties.vaultUri"]
    assert config.source.credentials.from_key_vault
    assert all(t.credentials.from_key_vault for t in config.targets)
    assert config.time_budget_seconds < 30 * 60, "below host.json functionTimeout"
    assert config.filters.keep_latest is None and config.filters.max_age_days is None, "no limit by default"
    # the per-instance request budget the fleet arithmetic counts on (docs/rate-limits.md)
    assert (config.targets[0].requests_per_second, config.targets[0].concurrent_requests) == (5.0, 8)


def test_no_forbidden_settings(app_settings: dict[str, Any]) -> None:
    present = FORBIDDEN_SETTINGS & set(app_settings)
    assert not present, f"must not be app settings in Azure: {sorted(present)}"


def test_no_secret_literals(
    main: dict[str, Any], network: dict[str, Any], app_settings: dict[str, Any]
) -> None:
    for name, value in app_settings.items():
        for leaf in string_leaves(value):
            assert not looks_like_secret(leaf), f"app setting {name} holds a secret-like literal"
    for tree in (main, network):
        for name, param in tree["parameters"].items():
            for leaf in string_leaves(param.get("default")):
                assert not looks_like_secret(leaf), f"parameter {name} default looks like a secret"
        for name, var in tree.get("variables", {}).items():
            for leaf in string_leaves(var["value"]):
                assert not looks_like_secret(leaf), f"variable {name} looks like a secret"
    for path in INFRA.rglob("*.bicep"):
        text = path.read_text()
        # listKeys()/listCredentials() would copy a key into the template's output or settings.
        assert not re.search(r"\blist(Keys|Credentials|AccountSas|ServiceSas)\s*\(", text), path
        assert "AccountKey=" not in text, path


def test_no_secrets_created_by_template(main: dict[str, Any], network: dict[str, Any]) -> None:
    for tree in (main, network):
        assert not of_type(tree, "Microsoft.KeyVault/vaults/secrets")
        for name, param in tree["parameters"].items():
            decorators = {d["type"] for d in param.get("decorators", [])}
            assert "secure" not in decorators, f"{name}: secrets are set with az keyvault secret set"


# ------------------------------------------------------------------------------------------
# storage
# ------------------------------------------------------------------------------------------


def test_storage_account(main: dict[str, Any]) -> None:
    account = body(only(main, "Microsoft.Storage/storageAccounts"))
    assert account["kind"] == "StorageV2"
    props = account["properties"]
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["allowBlobPublicAccess"] is False
    assert props["allowSharedKeyAccess"] is False, "identity-based host storage only"


def test_work_and_poison_queues(main: dict[str, Any]) -> None:
    queues = [
        body(q)["name"]
        for q in of_type(main, "Microsoft.Storage/storageAccounts/queueServices/queues").values()
    ]
    resolved = sorted(str(resolve(main, q)) for q in queues)
    assert resolved == ["${syncEventQueueName}-poison", "${syncQueueName}-poison", "sync-events", "sync-work"]
    assert resolve(main, "syncQueueName") == "sync-work"
    assert resolve(main, "syncEventQueueName") == "sync-events"  # the events' work: a queue of its own


def test_deployment_container_is_private(main: dict[str, Any]) -> None:
    container = body(only(main, "Microsoft.Storage/storageAccounts/blobServices/containers"))
    assert container["properties"]["publicAccess"] == "None"


# ------------------------------------------------------------------------------------------
# Key Vault, monitoring, audit trail
# ------------------------------------------------------------------------------------------


def test_key_vault_rbac_mode(main: dict[str, Any]) -> None:
    props = body(only(main, "Microsoft.KeyVault/vaults"))["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True
    assert resolve(main, props["softDeleteRetentionInDays"]) == 90
    assert "accessPolicies" not in props


def test_key_vault_purge_protection_is_a_parameter_off_by_default(main: dict[str, Any]) -> None:
    """Off: a test environment's deleted vault can be purged to free its name. On: production.

    The API takes only true for enablePurgeProtection (it cannot be undone): off leaves it out.
    """
    param = main["parameters"]["keyVaultPurgeProtection"]
    assert (param["type"], param["default"]) == ("bool", False)
    props = body(only(main, "Microsoft.KeyVault/vaults"))["properties"]
    assert props["enablePurgeProtection"] == {
        "operator": {
            "type": "conditional",
            "operands": {"condition": "keyVaultPurgeProtection", "true_value": True, "false_value": None},
        }
    }
    # azd: KEY_VAULT_PURGE_PROTECTION=true for production; unset keeps the default.
    assert "keyVaultPurgeProtection" not in azd_parameters(main, AZD_ENV)
    on = azd_parameters(main, {**AZD_ENV, "KEY_VAULT_PURGE_PROTECTION": "true"})
    assert on["keyVaultPurgeProtection"] is True


def test_workspace_based_application_insights(main: dict[str, Any]) -> None:
    workspace = name_of(main, "Microsoft.OperationalInsights/workspaces")
    props = body(only(main, "Microsoft.Insights/components"))["properties"]
    assert accessor(props["WorkspaceResourceId"]) == f"{workspace}.id"
    assert props["DisableLocalAuth"] is True


def diagnostic_settings(main: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """scope (symbolic name) -> diagnostic setting body."""
    found = {}
    for resource in of_type(main, "Microsoft.Insights/diagnosticSettings").values():
        config = body(resource)
        assert config["scope"] not in found, f"two diagnostic settings on {config['scope']}"
        found[config["scope"]] = config
    return found


def test_key_vault_audit_events_go_to_the_workspace(main: dict[str, Any]) -> None:
    settings = diagnostic_settings(main)
    vault = name_of(main, "Microsoft.KeyVault/vaults")
    assert vault in settings, "no diagnostic setting on the vault"
    props = settings[vault]["properties"]
    assert accessor(props["workspaceId"]) == f"{name_of(main, 'Microsoft.OperationalInsights/workspaces')}.id"
    logs = resolve(main, props["logs"])
    assert {"category": "AuditEvent", "enabled": True} in logs or {
        "categoryGroup": "audit",
        "enabled": True,
    } in logs


@pytest.mark.parametrize("service", ["blobServices", "queueServices", "tableServices"])
def test_storage_logs_go_to_the_workspace(main: dict[str, Any], service: str) -> None:
    settings = diagnostic_settings(main)
    scope = name_of(main, f"Microsoft.Storage/storageAccounts/{service}")
    assert scope in settings, f"no diagnostic setting on the {service}"
    props = settings[scope]["properties"]
    assert accessor(props["workspaceId"]) == f"{name_of(main, 'Microsoft.OperationalInsights/workspaces')}.id"
    logs = {entry["category"]: entry["enabled"] for entry in resolve(main, props["logs"])}
    assert logs["StorageWrite"] is True and logs["StorageDelete"] is True
    # StorageRead (every queue poll and lease renewal) follows a parameter, on by default
    assert resolve(main, logs["StorageRead"]) is True
    assert main["parameters"][logs["StorageRead"]]["type"] == "bool"


# ------------------------------------------------------------------------------------------
# private networking (vnetEnabled, off by default)
# ------------------------------------------------------------------------------------------


def test_private_networking_is_off_by_default(main: dict[str, Any]) -> None:
    param = main["parameters"]["vnetEnabled"]
    assert (param["type"], param["default"]) == ("bool", False)
    assert "vnetEnabled" not in azd_parameters(main, AZD_ENV), "unset VNET_ENABLED keeps the default"
    assert azd_parameters(main, {**AZD_ENV, "VNET_ENABLED": "true"})["vnetEnabled"] is True


def test_private_networking_closes_storage_and_vault(main: dict[str, Any], site: dict[str, Any]) -> None:
    for rtype in ("Microsoft.Storage/storageAccounts", "Microsoft.KeyVault/vaults"):
        props = body(only(main, rtype))["properties"]
        assert conditional(props["publicNetworkAccess"]) == {
            "condition": "vnetEnabled",
            "true_value": "Disabled",
            "false_value": "Enabled",
        }, rtype
        default_action = conditional(props["networkAcls"]["defaultAction"])
        assert (default_action["true_value"], default_action["false_value"]) == ("Deny", "Allow"), rtype
    (module_name, module) = next(
        (n, m) for n, m in main["modules"].items() if m["detail"]["path"] == "modules/private-network.bicep"
    )
    assert module["config"]["condition"] == "vnetEnabled"
    params = body(module)["params"]
    assert (
        accessor(params["storageAccountName"]) == f"{name_of(main, 'Microsoft.Storage/storageAccounts')}.name"
    )
    assert accessor(params["keyVaultName"]) == f"{name_of(main, 'Microsoft.KeyVault/vaults')}.name"
    subnet = conditional(site["properties"]["virtualNetworkSubnetId"])
    assert subnet["condition"] == "vnetEnabled" and subnet["false_value"] is None
    resource_id = subnet["true_value"]["function"]["parameters"]
    assert resource_id["resource_type"] == "Microsoft.Network/virtualNetworks/subnets"
    assert (resource_id["resource_name_1"], resource_id["resource_name_2"]) == ("vnetName", "appSubnetName")
    assert (params["vnetName"], params["appSubnetName"]) == ("vnetName", "appSubnetName")
    assert module_name in site["dependsOn"], "the app waits for its network"


def test_private_network_module(network: dict[str, Any]) -> None:
    vnet = body(only(network, "Microsoft.Network/virtualNetworks"))
    subnets = {s["name"]: s["properties"] for s in vnet["properties"]["subnets"]}
    app = subnets["appSubnetName"]
    assert [d["properties"]["serviceName"] for d in app["delegations"]] == ["Microsoft.App/environments"]
    links = resolve(network, "privateLinks")
    assert [link["groupId"] for link in links] == ["blob", "queue", "table", "vault"]
    assert [accessor(link["resourceId"]) for link in links] == ["storage.id"] * 3 + ["keyVault.id"]
    zones = [link["zone"] for link in links]
    assert zones[:3] == [
        f"privatelink.{g}.${{environment().suffixes.storage}}" for g in ("blob", "queue", "table")
    ]
    assert zones[3].startswith("privatelink${replace(environment().suffixes.keyvaultDns")
    for rtype in (
        "Microsoft.Network/privateDnsZones",
        "Microsoft.Network/privateDnsZones/virtualNetworkLinks",
        "Microsoft.Network/privateEndpoints",
        "Microsoft.Network/privateEndpoints/privateDnsZoneGroups",
    ):
        loop = only(network, rtype)["config"]["loop_type"]["detail"]
        assert loop["array_name"] == "privateLinks", rtype
    endpoint = body(only(network, "Microsoft.Network/privateEndpoints"))
    connection = endpoint["properties"]["privateLinkServiceConnections"][0]["properties"]
    assert accessor(connection["privateLinkServiceId"]) == "link.resourceId"
    assert [accessor(g) for g in connection["groupIds"]] == ["link.groupId"]
    link = body(only(network, "Microsoft.Network/privateDnsZones/virtualNetworkLinks"))
    assert link["properties"]["registrationEnabled"] is False
    assert accessor(link["properties"]["virtualNetwork"]["id"]) == "vnet.id"


# ------------------------------------------------------------------------------------------
# outputs, parameters file, azd project
# ------------------------------------------------------------------------------------------


def test_outputs(main: dict[str, Any]) -> None:
    expected = {
        "FUNCTION_APP_NAME",
        "FUNCTION_APP_ID",
        "FUNCTION_APP_PRINCIPAL_ID",
        "APP_IDENTITY_CLIENT_ID",
        "KEY_VAULT_URI",
        "STORAGE_ACCOUNT_NAME",
        "SOURCE_REGISTRY_NAME",
        "SOURCE_REGISTRY_RESOURCE_GROUP",
        "SOURCE_NAMESPACE",
    }
    assert expected <= set(main["outputs"])
    # azd exports outputs to hooks as environment variables: AZURE_CLIENT_ID there would make
    # az/azd in a hook sign in as something else.
    assert not {"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"} & set(main["outputs"])


def test_parameters_file_fills_the_template_from_the_azd_environment(main: dict[str, Any]) -> None:
    """`azd up` is the whole first step: the committed file maps parameters to environment values."""
    document = json.loads(PARAMETERS.read_text())
    assert document["contentVersion"] == "1.0.0.0"
    values = {name: entry["value"] for name, entry in document["parameters"].items()}
    unknown = set(values) - set(main["parameters"])
    assert not unknown, f"unknown parameters {sorted(unknown)}"
    assert values["environmentName"] == "${AZURE_ENV_NAME}"
    assert values["location"] == "${AZURE_LOCATION}"
    assert values["acrName"] == "${SOURCE_REGISTRY_NAME}"
    assert values["acrResourceGroupName"] == "${SOURCE_REGISTRY_RESOURCE_GROUP}"
    required = {name for name, p in main["parameters"].items() if p.get("default") is None}
    assert required <= set(values), f"required parameters missing: {sorted(required - set(values))}"
    for name, value in values.items():
        assert isinstance(value, str) and PLACEHOLDER.fullmatch(value), f"{name}: no literal values here"
        for leaf in string_leaves(value):
            assert not looks_like_secret(leaf), name
    resolved = azd_parameters(main, AZD_ENV)
    assert resolved["acrResourceGroupName"] == "rg-gsoci" and resolved["location"] == "westeurope"
    # an empty location is the resource group's (azd leaves AZURE_LOCATION unset for an existing group)
    assert main["parameters"]["location"]["default"] == ""
    assert conditional(main["variables"]["appLocation"]["value"])["false_value"] == "location"


def test_the_parameters_file_is_committed_and_no_example_is_left() -> None:
    assert not (INFRA / "main.parameters.example.json").exists()
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", str(PARAMETERS.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if tracked.returncode != 0 and "not a git repository" in tracked.stderr:
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(PARAMETERS.relative_to(ROOT))], cwd=ROOT, capture_output=True
    )
    assert ignored.returncode == 1, ".gitignore must not ignore infra/main.parameters.json"
    for path in [*READMES, ROOT / "azure.yaml"]:
        assert "main.parameters.example.json" not in path.read_text(), path


def test_azure_yaml() -> None:
    project = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert project["infra"]["provider"] == "bicep"
    assert project["infra"]["path"] == "infra"
    assert project["infra"]["module"] == "main"
    service = project["services"]["sync"]
    assert service["host"] == "function"
    assert service["language"] == "python"
    for hook, script in (("preprovision", CHECK_SCRIPT), ("postdeploy", SCRIPT)):
        posix = project["hooks"][hook]["posix"]
        assert posix["run"] == f"bash ./scripts/{script.name}", hook
        assert posix["continueOnError"] is False, f"{hook}: a failure must stop azd"


def azd_minimum() -> tuple[int, ...]:
    spec = yaml.safe_load((ROOT / "azure.yaml").read_text())["requiredVersions"]["azd"]
    m = re.fullmatch(r">=\s*(\d+)\.(\d+)\.(\d+)", spec)
    assert m, spec
    return tuple(int(g) for g in m.groups())


def test_stated_tool_versions_are_the_ones_the_templates_need() -> None:
    """azd 1.10.0 deploys at resource-group scope without the alpha flag (Azure/azure-dev#4285);
    azd 1.12.0 is the first to ship a Bicep (0.33.93) with fail(), which main.bicep uses (fail()
    arrived in Bicep 0.33.13)."""
    assert azd_minimum() >= (1, 12, 0)
    assert "fail(" in bicep_code(MAIN)
    infra_readme = (INFRA / "README.md").read_text()
    version = ".".join(str(n) for n in azd_minimum())
    assert f"`azd`) {version}" in infra_readme or f"azd {version}" in infra_readme
    assert "Bicep 0.33.13" in infra_readme
    for path in READMES:
        assert not re.search(r"\bazd\W{0,3}1\.9\b", path.read_text()), f"{path}: an outdated azd minimum"


# ------------------------------------------------------------------------------------------
# the hooks, with a stand-in az that records its calls
# ------------------------------------------------------------------------------------------


FAKE_AZ = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_AZ_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
line = " ".join(args)
for prefix, answer in json.loads(os.environ.get("FAKE_AZ_ANSWERS", "{{}}")).items():
    if line.startswith(prefix):
        sys.stdout.write(answer.get("out", ""))
        sys.exit(answer.get("rc", 0))
sys.exit(0)
"""

SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
REGISTRY_ID = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-gsoci/providers/Microsoft.ContainerRegistry/registries/gsoci"
APP_ID = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-app/providers/Microsoft.Web/sites/regsync-func-x"
HOOK_VARIABLES = {
    "AZURE_SUBSCRIPTION_ID",
    "AZURE_RESOURCE_GROUP",
    "FUNCTION_APP_ID",
    "FUNCTION_APP_NAME",
    "SOURCE_REGISTRY_NAME",
    "SOURCE_REGISTRY_RESOURCE_GROUP",
    "SOURCE_NAMESPACE",
    "SYSTEM_TOPIC_NAME",
    "EVENT_SUBSCRIPTION_NAME",
    "DRY_RUN",
    "WAIT_SECONDS",
}


@pytest.fixture
def fake_az(tmp_path: Path):
    """Runs a hook with a stand-in `az` first on PATH; returns (result, calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    az = bin_dir / "az"
    az.write_text(FAKE_AZ.format(python=sys.executable))
    az.chmod(0o755)
    log = tmp_path / "az.log"

    def run(script: Path, *args: str, answers: dict[str, Any] | None = None, **env: str):
        log.write_text("")
        clean = {k: v for k, v in os.environ.items() if k not in HOOK_VARIABLES}
        clean.update(env)
        clean["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
        clean["FAKE_AZ_LOG"] = str(log)
        clean["FAKE_AZ_ANSWERS"] = json.dumps(answers or {})
        result = subprocess.run(
            ["bash", str(script), *args], env=clean, capture_output=True, text=True, timeout=30
        )
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        return result, calls

    return run


def assert_every_call_names_the_subscription(calls: list[list[str]]) -> None:
    assert calls, "az was not called"
    for call in calls:
        assert "--subscription" in call, f"az {' '.join(call)} runs in az's default subscription"
        assert call[call.index("--subscription") + 1] == SUBSCRIPTION, call


CHECK_ENV = {
    "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
    "AZURE_RESOURCE_GROUP": "rg-app",
    "SOURCE_REGISTRY_NAME": "gsoci",
    "SOURCE_REGISTRY_RESOURCE_GROUP": "rg-gsoci",
}
CHECK_ANSWERS = {
    "acr show": {"out": REGISTRY_ID + "\n"},
    "group exists": {"out": "true\n"},
    "resource list": {"out": ""},
    "lock list": {"out": "protect-source\n"},
}


def test_check_script_passes_a_separate_group_and_names_the_subscription_on_every_call(fake_az) -> None:
    result, calls = fake_az(CHECK_SCRIPT, answers=CHECK_ANSWERS, **CHECK_ENV)
    assert result.returncode == 0, result.stderr
    assert_every_call_names_the_subscription(calls)
    assert [c[:2] for c in calls] == [
        ["acr", "show"],
        ["group", "exists"],
        ["resource", "list"],
        ["lock", "list"],
    ]
    assert "warning" not in result.stderr


@pytest.mark.parametrize("registry_group", ["rg-app", "RG-App"])
def test_check_script_refuses_the_app_group_as_the_registry_group_before_calling_az(
    fake_az, registry_group: str
) -> None:
    env = {**CHECK_ENV, "SOURCE_REGISTRY_RESOURCE_GROUP": registry_group}
    result, calls = fake_az(CHECK_SCRIPT, answers=CHECK_ANSWERS, **env)
    assert result.returncode != 0
    assert "azd down deletes that whole" in result.stderr
    assert calls == []


def test_check_script_refuses_a_registry_that_is_in_the_app_group(fake_az) -> None:
    """SOURCE_REGISTRY_RESOURCE_GROUP is a claim: az says where the registry really is."""
    in_app_group = REGISTRY_ID.replace("/rg-gsoci/", "/rg-app/")
    answers = {**CHECK_ANSWERS, "acr show": {"out": in_app_group + "\n"}}
    result, _ = fake_az(CHECK_SCRIPT, answers=answers, **CHECK_ENV)
    assert result.returncode != 0 and "the app's resource group" in result.stderr
    elsewhere = REGISTRY_ID.replace("/rg-gsoci/", "/rg-other/")
    result, _ = fake_az(CHECK_SCRIPT, answers={**CHECK_ANSWERS, "acr show": {"out": elsewhere}}, **CHECK_ENV)
    assert result.returncode != 0 and "rg-other, not rg-gsoci" in result.stderr
    result, _ = fake_az(CHECK_SCRIPT, answers={**CHECK_ANSWERS, "acr show": {"rc": 3}}, **CHECK_ENV)
    assert result.returncode != 0 and "not found" in result.stderr


def test_check_script_refuses_an_app_group_that_holds_registries(fake_az) -> None:
    answers = {**CHECK_ANSWERS, "resource list": {"out": "gsoci-staging\nother\n"}}
    result, _ = fake_az(CHECK_SCRIPT, answers=answers, **CHECK_ENV)
    assert result.returncode != 0
    assert "holds container registries (gsoci-staging other)" in result.stderr
    # a group azd has yet to create holds nothing
    answers = {**CHECK_ANSWERS, "group exists": {"out": "false\n"}, "resource list": {"out": "x\n"}}
    result, calls = fake_az(CHECK_SCRIPT, answers=answers, **CHECK_ENV)
    assert result.returncode == 0, result.stderr
    assert ["resource", "list"] not in [c[:2] for c in calls]


def test_check_script_warns_when_the_registry_has_no_lock(fake_az) -> None:
    result, _ = fake_az(CHECK_SCRIPT, answers={**CHECK_ANSWERS, "lock list": {"out": ""}}, **CHECK_ENV)
    assert result.returncode == 0
    assert "no CanNotDelete lock on registry gsoci" in result.stderr


def test_check_script_asks_for_every_missing_value(fake_az) -> None:
    result, calls = fake_az(CHECK_SCRIPT, SOURCE_REGISTRY_NAME="gsoci")
    assert result.returncode != 0 and calls == []
    for name in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "SOURCE_REGISTRY_RESOURCE_GROUP"):
        assert f"azd env set {name} <value>" in result.stderr
    assert "azd env set SOURCE_REGISTRY_NAME" not in result.stderr
    # flags for the az path
    result, _ = fake_az(
        CHECK_SCRIPT,
        "--subscription",
        SUBSCRIPTION,
        "--resource-group",
        "rg-app",
        "--registry",
        "gsoci",
        "--registry-resource-group",
        "rg-gsoci",
        answers=CHECK_ANSWERS,
    )
    assert result.returncode == 0, result.stderr


def test_scripts_are_executable_bash() -> None:
    for script in (SCRIPT, CHECK_SCRIPT):
        subprocess.run(["bash", "-n", str(script)], check=True)
        assert os.access(script, os.X_OK), script


EVENT_ENV = {
    "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
    "FUNCTION_APP_ID": APP_ID,
    "SOURCE_REGISTRY_NAME": "gsoci",
    "SOURCE_REGISTRY_RESOURCE_GROUP": "rg-gsoci",
    "SOURCE_NAMESPACE": "giantswarm",
    "WAIT_SECONDS": "0",
}
TOPICS = "\t".join(
    ["/subscriptions/x/resourceGroups/rg-x/providers/Microsoft.Storage/storageAccounts/s", "s-events", "rg-x"]
)


def test_event_script_creates_the_topic_and_the_subscription_in_the_registry_group(fake_az) -> None:
    answers = {
        "acr show --subscription " + SUBSCRIPTION + " --name gsoci --resource-group rg-gsoci --query id": {
            "out": REGISTRY_ID + "\n"
        },
        "acr show --subscription "
        + SUBSCRIPTION
        + " --name gsoci --resource-group rg-gsoci --query location": {"out": "westeurope\n"},
        "eventgrid system-topic list": {"out": TOPICS + "\n"},
    }
    result, calls = fake_az(SCRIPT, answers=answers, **EVENT_ENV)
    assert result.returncode == 0, result.stderr
    assert_every_call_names_the_subscription(calls)
    creates = [c for c in calls if "create" in c]
    topic, subscription = creates
    assert topic[:3] == ["eventgrid", "system-topic", "create"]
    for flag, value in (
        ("--name", "gsoci-events"),
        ("--resource-group", "rg-gsoci"),
        ("--location", "westeurope"),
        ("--source", REGISTRY_ID),
        ("--topic-type", "Microsoft.ContainerRegistry.Registries"),
    ):
        assert topic[topic.index(flag) + 1] == value, flag
    assert subscription[:4] == ["eventgrid", "system-topic", "event-subscription", "create"]
    for flag, value in (
        ("--system-topic-name", "gsoci-events"),
        ("--resource-group", "rg-gsoci"),
        ("--endpoint-type", "azurefunction"),
        ("--endpoint", f"{APP_ID}/functions/on_image_pushed"),
        ("--included-event-types", "Microsoft.ContainerRegistry.ImagePushed"),
        ("--subject-begins-with", "giantswarm/"),
        ("--event-delivery-schema", "eventgridschema"),
        ("--max-delivery-attempts", "30"),
        ("--event-ttl", "1440"),
    ):
        assert subscription[subscription.index(flag) + 1] == value, flag


def test_event_script_reuses_the_registry_s_existing_topic(fake_az) -> None:
    """A registry has at most one system topic: found by its source, wherever it is, and reused."""
    existing = "\t".join([REGISTRY_ID.upper(), "gsoci-topic", "rg-events"])
    answers = {
        "acr show --subscription " + SUBSCRIPTION + " --name gsoci --resource-group rg-gsoci --query id": {
            "out": REGISTRY_ID + "\n"
        },
        "eventgrid system-topic list": {"out": TOPICS + "\n" + existing + "\n"},
    }
    result, calls = fake_az(SCRIPT, answers=answers, **EVENT_ENV)
    assert result.returncode == 0, result.stderr
    assert_every_call_names_the_subscription(calls)
    assert not any(c[:3] == ["eventgrid", "system-topic", "create"] for c in calls)
    (subscription,) = [
        c for c in calls if c[:4] == ["eventgrid", "system-topic", "event-subscription", "create"]
    ]
    assert subscription[subscription.index("--system-topic-name") + 1] == "gsoci-topic"
    assert subscription[subscription.index("--resource-group") + 1] == "rg-events"
    result, _ = fake_az(SCRIPT, answers=answers, SYSTEM_TOPIC_NAME="other", **EVENT_ENV)
    assert result.returncode != 0 and "can have only one" in result.stderr


def test_event_script_dry_run_and_name_lookup(fake_az) -> None:
    env = {k: v for k, v in EVENT_ENV.items() if k != "FUNCTION_APP_ID"}
    result, calls = fake_az(
        SCRIPT, "--dry-run", FUNCTION_APP_NAME="regsync-func-x", AZURE_RESOURCE_GROUP="rg-app", **env
    )
    assert result.returncode == 0, result.stderr
    assert calls == [], "a dry run calls nothing"
    lines = result.stdout.strip().splitlines()
    assert [line.split()[:4] for line in lines] == [
        ["az", "eventgrid", "system-topic", "create"],
        ["az", "eventgrid", "system-topic", "event-subscription"],
    ]
    assert all(f"--subscription {SUBSCRIPTION}" in line for line in lines)
    assert f"--endpoint {APP_ID}/functions/on_image_pushed" in lines[1]
    env.pop("SOURCE_NAMESPACE")
    result, _ = fake_az(SCRIPT, "--dry-run", FUNCTION_APP_ID=APP_ID, **env)
    assert result.returncode == 0 and "--subject-begins-with" not in result.stdout


def test_event_script_rejects_missing_or_unsafe_inputs(fake_az) -> None:
    env = dict(EVENT_ENV)
    for missing in ("SOURCE_REGISTRY_NAME", "SOURCE_REGISTRY_RESOURCE_GROUP"):
        result, calls = fake_az(SCRIPT, "--dry-run", **{k: v for k, v in env.items() if k != missing})
        assert result.returncode != 0 and missing in result.stderr and calls == []
    no_app = {k: v for k, v in env.items() if k != "FUNCTION_APP_ID"}
    result, _ = fake_az(SCRIPT, "--dry-run", **no_app)
    assert result.returncode != 0 and "FUNCTION_APP_ID" in result.stderr
    result, _ = fake_az(SCRIPT, "--dry-run", **{**env, "FUNCTION_APP_ID": "not-an-id"})
    assert result.returncode != 0
    other = APP_ID.replace(SUBSCRIPTION, "00000000-0000-0000-0000-000000000002")
    result, _ = fake_az(SCRIPT, "--dry-run", **{**env, "FUNCTION_APP_ID": other})
    assert result.returncode != 0 and "not " + SUBSCRIPTION in result.stderr
    same_group = APP_ID.replace("/rg-app/", "/rg-gsoci/")
    result, calls = fake_az(SCRIPT, **{**env, "FUNCTION_APP_ID": same_group})
    assert result.returncode != 0 and "azd down would delete" in result.stderr and calls == []


# ------------------------------------------------------------------------------------------
# what the documentation promises
# ------------------------------------------------------------------------------------------


def commands(text: str) -> list[str]:
    """The commands in the fenced code blocks of a Markdown text, continued lines joined."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    joined = [re.sub(r"\\\n\s*", " ", block) for block in blocks]
    return [line.strip() for block in joined for line in block.splitlines()]


def test_no_documented_command_deletes_or_changes_the_source_registry() -> None:
    for path in READMES:
        text = path.read_text()
        for line in commands(text):
            assert not re.search(r"\bazd down\b.*--purge", line), f"{path}: {line}"
            assert not re.search(r"\baz (acr|group) delete\b", line), f"{path}: {line}"
            assert not re.search(r"\baz lock delete\b", line), f"{path}: {line}"
        assert "cp infra/main.parameters" not in text, f"{path}: azd up needs no file copied by hand"


def test_readme_says_what_azd_down_deletes_and_how_to_lock_the_registry() -> None:
    readme = (INFRA / "README.md").read_text()
    section = readme.split("## What `azd down` deletes", 1)[1].split("\n## ", 1)[0]
    for fact in ("AZURE_RESOURCE_GROUP", "--purge", "system topic", "event subscription"):
        assert fact in section, fact
    lock = [line for line in commands(readme) if line.startswith("az lock create")]
    assert lock and "--lock-type CanNotDelete" in lock[0] and "--subscription" in lock[0]
    assert "Microsoft.ContainerRegistry/registries" in lock[0] or "--resource " in lock[0]
    assert "vnetEnabled" in readme and "## Private networking" in readme
    assert "AuditEvent" in readme and "StorageRead" in readme


def skipped_check_ids() -> set[str]:
    ids: set[str] = set()
    for path in INFRA.rglob("*.bicep"):
        for match in re.finditer(r"//\s*checkov:skip=([A-Z0-9_]+):(.*)", path.read_text()):
            assert len(match.group(2).strip()) > 20, f"{match.group(1)} in {path} needs a justification"
            ids.add(match.group(1))
    return ids


def test_readme_documents_skipped_checks() -> None:
    readme = (INFRA / "README.md").read_text()
    for check_id in skipped_check_ids():
        assert check_id in readme, f"{check_id} is skipped in Bicep but not explained in infra/README.md"


# ------------------------------------------------------------------------------------------
# checkov (own venv: its pins clash with the app's dependencies)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkov() -> Path:
    make = shutil.which("make")
    if make:  # installs, or brings up to date after mk/infra.mk changed (its pins); else nothing
        subprocess.run([make, "-C", str(ROOT), "-f", "mk/infra.mk", "tools-venv"], check=True, timeout=600)
    assert os.access(CHECKOV, os.X_OK), "make is needed to install checkov into .venv-tools"
    return CHECKOV


def test_checkov_passes(checkov: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [
            str(checkov),
            "-d",
            str(INFRA),
            "--framework",
            "bicep",
            "--compact",
            "--skip-download",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    elapsed = time.monotonic() - started
    report = json.loads(result.stdout)
    failed = [
        f"{c['check_id']} {c['resource']} ({c['check_name']})" for c in report["results"]["failed_checks"]
    ]
    assert not failed, "checkov failed:\n" + "\n".join(failed)
    assert result.returncode == 0, result.stderr[-2000:]
    # a file checkov cannot parse (its parser must know fail(): mk/infra.mk) is not checked at all
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 0
    checked = {c["file_path"].lstrip("/") for c in report["results"]["passed_checks"]}
    assert {"main.bicep", "modules/private-network.bicep"} <= checked
    # Every suppression carries a reason, and every suppression in the files was used.
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    for check in report["results"]["skipped_checks"]:
        assert check["check_result"]["suppress_comment"] != "No comment provided", check["check_id"]
    assert skipped == skipped_check_ids(), "stale or unparsed #checkov:skip comment"
    assert elapsed < 60, f"checkov took {elapsed:.0f}s"
