"""Infrastructure as code: infra/*.bicep parsed with pycep, checkov on infra/, the azd project,
the parameters example and the post-deploy script that creates the Event Grid subscription."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pycep import BicepParser

from sync_core.config.load import load_config
from sync_core.config.model import Compare
from sync_core.config.settings import APP_SETTINGS
from tests.harness.secret_values import looks_like_secret

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
EVENTS_MODULE = INFRA / "modules" / "acr-events.bicep"
TOOLS_VENV = ROOT / ".venv-tools"
CHECKOV = TOOLS_VENV / "bin" / "checkov"
SCRIPT = ROOT / "scripts" / "create-event-subscription.sh"

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
ROLE_KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
ROLE_MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"

# Resource types and the (GA) API versions used; each is known to checkov and to ARM.
KNOWN_API_VERSIONS = {
    "Microsoft.Web/serverfarms": "2023-12-01",
    "Microsoft.Web/sites": "2023-12-01",
    "Microsoft.Web/sites/basicPublishingCredentialsPolicies": "2023-12-01",
    "Microsoft.Storage/storageAccounts": "2023-05-01",
    "Microsoft.Storage/storageAccounts/blobServices": "2023-05-01",
    "Microsoft.Storage/storageAccounts/blobServices/containers": "2023-05-01",
    "Microsoft.Storage/storageAccounts/queueServices": "2023-05-01",
    "Microsoft.Storage/storageAccounts/queueServices/queues": "2023-05-01",
    "Microsoft.KeyVault/vaults": "2023-07-01",
    "Microsoft.OperationalInsights/workspaces": "2022-10-01",
    "Microsoft.Insights/components": "2020-02-02",
    "Microsoft.Authorization/roleAssignments": "2022-04-01",
    "Microsoft.ContainerRegistry/registries": "2023-07-01",
    "Microsoft.EventGrid/systemTopics": "2022-06-15",
    "Microsoft.EventGrid/systemTopics/eventSubscriptions": "2022-06-15",
}


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def parse(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource body, unwrapping `= if (cond) {...}`."""
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


def string_leaves(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from string_leaves(value)
    elif isinstance(node, list):
        for value in node:
            yield from string_leaves(value)


@pytest.fixture(scope="module")
def main() -> dict[str, Any]:
    return parse(MAIN)


@pytest.fixture(scope="module")
def events() -> dict[str, Any]:
    return parse(EVENTS_MODULE)


@pytest.fixture(scope="module")
def site(main: dict[str, Any]) -> dict[str, Any]:
    return body(only(main, "Microsoft.Web/sites"))


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
    assert MAIN in files and EVENTS_MODULE in files
    for path in files:
        tree = parse(path)
        assert tree.get("resources"), f"{path} declares no resources"


def test_api_versions_are_known_and_ga(main: dict[str, Any], events: dict[str, Any]) -> None:
    for tree in (main, events):
        for name, resource in tree["resources"].items():
            rtype, version = resource["type"], resource["api_version"]
            assert "preview" not in version, name
            assert KNOWN_API_VERSIONS.get(rtype) == version, f"{name}: {rtype}@{version}"


def test_modules_resolve(main: dict[str, Any]) -> None:
    for name, module in main.get("modules", {}).items():
        assert (INFRA / module["detail"]["path"]).is_file(), name


# ------------------------------------------------------------------------------------------
# plan and function app
# ------------------------------------------------------------------------------------------


def test_flex_consumption_plan(main: dict[str, Any]) -> None:
    plan = body(only(main, "Microsoft.Web/serverfarms"))
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True, "Linux"


def test_function_app_basics(main: dict[str, Any], site: dict[str, Any]) -> None:
    assert site["kind"] == "functionapp,linux"
    assert site["identity"] == {"type": "SystemAssigned"}
    props = site["properties"]
    assert props["httpsOnly"] is True
    assert accessor(props["serverFarmId"]) == f"{next(iter(of_type(main, 'Microsoft.Web/serverfarms')))}.id"
    config = props["siteConfig"]
    assert config["minTlsVersion"] == "1.2"
    assert config["ftpsState"] == "Disabled"
    # azd finds the app to deploy the "sync" service to by this tag.
    assert "'azd-service-name': 'sync'" in MAIN.read_text()


def worker_tier_python() -> str:
    m = re.search(r"^WORKER_PY_VERSION := (\S+)$", (ROOT / "mk" / "worker.mk").read_text(), re.M)
    assert m, "WORKER_PY_VERSION not found in mk/worker.mk"
    return m.group(1)


def test_function_app_config(main: dict[str, Any], site: dict[str, Any]) -> None:
    fac = site["properties"]["functionAppConfig"]
    # The Python the worker-contract tier runs (mk/worker.mk); tests/worker checks its interpreter.
    assert fac["runtime"] == {"name": "python", "version": worker_tier_python()}
    scale = fac["scaleAndConcurrency"]
    assert resolve(main, scale["instanceMemoryMB"]) == 2048
    assert 1 <= resolve(main, scale["maximumInstanceCount"]) <= 1000
    storage = fac["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"]["type"] == "SystemAssignedIdentity"
    container = body(only(main, "Microsoft.Storage/storageAccounts/blobServices/containers"))
    assert storage["value"].endswith("${" + container["name"] + "}")


def test_no_basic_auth_publishing(main: dict[str, Any]) -> None:
    policies = of_type(main, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert sorted(body(p)["name"] for p in policies.values()) == ["ftp", "scm"]
    assert all(body(p)["properties"]["allow"] is False for p in policies.values())


# ------------------------------------------------------------------------------------------
# app settings
# ------------------------------------------------------------------------------------------


def test_app_settings_complete(main: dict[str, Any], app_settings: dict[str, Any]) -> None:
    missing = [s for s in APP_SETTINGS if s not in app_settings]
    assert not missing, f"app settings missing from main.bicep: {missing}"
    storage_name = next(iter(of_type(main, "Microsoft.Storage/storageAccounts")))
    assert accessor(app_settings["AzureWebJobsStorage__accountName"]) == f"{storage_name}.name"
    insights = next(iter(of_type(main, "Microsoft.Insights/components")))
    assert accessor(app_settings["APPLICATIONINSIGHTS_CONNECTION_STRING"]) == (
        f"{insights}.properties.ConnectionString"
    )
    assert app_settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "Authorization=AAD"
    vault = next(iter(of_type(main, "Microsoft.KeyVault/vaults")))
    assert accessor(app_settings["KEY_VAULT_URL"]) == f"{vault}.properties.vaultUri"


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


@pytest.mark.parametrize("source", ["defaults", "example"])
def test_deployed_settings_are_a_valid_app_configuration(
    main: dict[str, Any], app_settings: dict[str, Any], source: str
) -> None:
    """The app settings a deployment produces load with the app's own configuration loader."""
    overrides: dict[str, Any] = {"acrName": "gsoci", "targetRegistry": "registry-1.docker.io"}
    if source == "example":
        example = json.loads((INFRA / "main.parameters.example.json").read_text())["parameters"]
        overrides = {name: entry["value"] for name, entry in example.items()}
    env = deployed_settings(main, app_settings, overrides)
    assert all(isinstance(v, str) for v in env.values()), env
    config = load_config(env)
    assert config.queue == "sync-work"
    assert config.key_vault_url == RUNTIME_VALUES["keyVault.properties.vaultUri"]
    assert config.source.credentials.from_key_vault
    assert all(t.credentials.from_key_vault for t in config.targets)
    assert config.time_budget_seconds < 30 * 60, "below host.json functionTimeout"
    assert config.filters.keep_latest is None and config.filters.max_age_days is None, "no limit by default"


def test_no_forbidden_settings(app_settings: dict[str, Any]) -> None:
    present = FORBIDDEN_SETTINGS & set(app_settings)
    assert not present, f"must not be app settings in Azure: {sorted(present)}"


def test_no_secret_literals(
    main: dict[str, Any], events: dict[str, Any], app_settings: dict[str, Any]
) -> None:
    for name, value in app_settings.items():
        for leaf in string_leaves(value):
            assert not looks_like_secret(leaf), f"app setting {name} holds a secret-like literal"
    for tree in (main, events):
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


def test_no_secrets_created_by_template(main: dict[str, Any], events: dict[str, Any]) -> None:
    for tree in (main, events):
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
    assert resolved == ["${syncQueueName}-poison", "sync-work"]
    assert resolve(main, "syncQueueName") == "sync-work"


def test_deployment_container_is_private(main: dict[str, Any]) -> None:
    container = body(only(main, "Microsoft.Storage/storageAccounts/blobServices/containers"))
    assert container["properties"]["publicAccess"] == "None"


# ------------------------------------------------------------------------------------------
# identity: role assignments
# ------------------------------------------------------------------------------------------


def role_assignments(main: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """role definition id -> assignment body."""
    found: dict[str, dict[str, Any]] = {}
    for name, resource in of_type(main, "Microsoft.Authorization/roleAssignments").items():
        config = body(resource)
        role_def = config["properties"]["roleDefinitionId"]["function"]
        assert role_def["type"] == "subscription_resource_id", name
        assert role_def["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions", name
        role_id = resolve(main, role_def["parameters"]["resource_name_1"])
        found[role_id] = config
    return found


@pytest.mark.parametrize(
    ("role_id", "scope_type"),
    [
        (ROLE_STORAGE_BLOB_DATA_OWNER, "Microsoft.Storage/storageAccounts"),
        (ROLE_STORAGE_QUEUE_DATA_CONTRIBUTOR, "Microsoft.Storage/storageAccounts"),
        (ROLE_KEY_VAULT_SECRETS_USER, "Microsoft.KeyVault/vaults"),
        (ROLE_MONITORING_METRICS_PUBLISHER, "Microsoft.Insights/components"),
    ],
)
def test_role_assignment_for_app_identity(main: dict[str, Any], role_id: str, scope_type: str) -> None:
    assignments = role_assignments(main)
    assert role_id in assignments, f"no role assignment with role {role_id}"
    config = assignments[role_id]
    site_name = next(iter(of_type(main, "Microsoft.Web/sites")))
    assert accessor(config["properties"]["principalId"]) == f"{site_name}.identity.principalId"
    assert config["properties"]["principalType"] == "ServicePrincipal"
    assert config["scope"] in of_type(main, scope_type), f"role {role_id} not scoped to the {scope_type}"
    # Deterministic name: redeploying does not create duplicates.
    assert config["name"]["function"]["type"] == "guid"


# ------------------------------------------------------------------------------------------
# Key Vault, monitoring
# ------------------------------------------------------------------------------------------


def test_key_vault_rbac_mode(main: dict[str, Any]) -> None:
    props = body(only(main, "Microsoft.KeyVault/vaults"))["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True
    assert resolve(main, props["softDeleteRetentionInDays"]) == 90
    assert "accessPolicies" not in props


def test_key_vault_purge_protection_is_a_parameter_off_by_default(main: dict[str, Any]) -> None:
    """Off: `azd down --purge` + `azd up` reuse the environment's vault name. On: production.

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
    # The example stays re-creatable; infra/README.md says to set true for production.
    example = json.loads((INFRA / "main.parameters.example.json").read_text())["parameters"]
    assert example["keyVaultPurgeProtection"]["value"] is False


def test_workspace_based_application_insights(main: dict[str, Any]) -> None:
    workspace = next(iter(of_type(main, "Microsoft.OperationalInsights/workspaces")))
    props = body(only(main, "Microsoft.Insights/components"))["properties"]
    assert accessor(props["WorkspaceResourceId"]) == f"{workspace}.id"
    assert props["DisableLocalAuth"] is True


# ------------------------------------------------------------------------------------------
# Event Grid
# ------------------------------------------------------------------------------------------


def test_system_topic_on_existing_registry(events: dict[str, Any]) -> None:
    registries = of_type(events, "Microsoft.ContainerRegistry/registries")
    assert len(registries) == 1
    registry_name, registry = next(iter(registries.items()))
    assert registry["existing"] is True
    topic = body(only(events, "Microsoft.EventGrid/systemTopics"))
    assert topic["properties"]["topicType"] == "Microsoft.ContainerRegistry.Registries"
    assert accessor(topic["properties"]["source"]) == f"{registry_name}.id"
    assert accessor(topic["location"]) == f"{registry_name}.location", (
        "system topic follows the registry region"
    )


def test_event_subscription_option(events: dict[str, Any]) -> None:
    resource = only(events, "Microsoft.EventGrid/systemTopics/eventSubscriptions")
    assert resource["config"]["condition"] == "deployEventSubscription"
    assert events["parameters"]["deployEventSubscription"]["default"] is False
    props = body(resource)["properties"]
    destination = props["destination"]
    assert destination["endpointType"] == "AzureFunction"
    assert destination["properties"]["resourceId"].endswith("/functions/on_image_pushed")
    assert props["filter"]["includedEventTypes"] == ["Microsoft.ContainerRegistry.ImagePushed"]
    assert props["eventDeliverySchema"] == "EventGridSchema"
    assert set(props["retryPolicy"]) == {"maxDeliveryAttempts", "eventTimeToLiveInMinutes"}


def test_events_module_deployed_in_registry_resource_group(main: dict[str, Any]) -> None:
    modules = [m for m in main["modules"].values() if m["detail"]["path"] == "modules/acr-events.bicep"]
    assert len(modules) == 1
    config = modules[0]["config"]
    scope = config["scope"]["function"]
    assert scope["type"] == "resource_group"
    assert scope["parameters"]["resource_group_name"] == "acrResourceGroupName"
    assert (
        accessor(config["params"]["functionAppId"])
        == f"{next(iter(of_type(main, 'Microsoft.Web/sites')))}.id"
    )
    assert main["parameters"]["deployEventSubscription"]["default"] is False


def test_outputs(main: dict[str, Any]) -> None:
    expected = {
        "FUNCTION_APP_NAME",
        "FUNCTION_APP_ID",
        "FUNCTION_APP_PRINCIPAL_ID",
        "KEY_VAULT_URI",
        "STORAGE_ACCOUNT_NAME",
        "SYSTEM_TOPIC_NAME",
        "SYSTEM_TOPIC_RESOURCE_GROUP",
        "SOURCE_NAMESPACE",
    }
    assert expected <= set(main["outputs"])


# ------------------------------------------------------------------------------------------
# parameters example, azd project, post-deploy script, README
# ------------------------------------------------------------------------------------------


def test_parameters_example_matches_template(main: dict[str, Any]) -> None:
    example = json.loads((INFRA / "main.parameters.example.json").read_text())
    assert example["contentVersion"] == "1.0.0.0"
    values = example["parameters"]
    unknown = set(values) - set(main["parameters"])
    assert not unknown, f"parameters example has unknown parameters {sorted(unknown)}"
    required = {name for name, p in main["parameters"].items() if p.get("default") is None}
    assert required <= set(values), f"required parameters missing: {sorted(required - set(values))}"
    for name, entry in values.items():
        for leaf in string_leaves(entry["value"]):
            assert not looks_like_secret(leaf), name
        allowed = [d["argument"] for d in main["parameters"][name]["decorators"] if d["type"] == "allowed"]
        if allowed:
            assert entry["value"] in allowed[0], name


def test_azure_yaml() -> None:
    project = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert project["infra"]["provider"] == "bicep"
    assert project["infra"]["path"] == "infra"
    assert project["infra"]["module"] == "main"
    service = project["services"]["sync"]
    assert service["host"] == "function"
    assert service["language"] == "python"
    assert "create-event-subscription.sh" in project["hooks"]["postdeploy"]["posix"]["run"]


def test_script_syntax() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert os.access(SCRIPT, os.X_OK)


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "FUNCTION_APP_ID",
            "FUNCTION_APP_NAME",
            "AZURE_RESOURCE_GROUP",
            "SYSTEM_TOPIC_NAME",
            "SYSTEM_TOPIC_RESOURCE_GROUP",
            "SOURCE_NAMESPACE",
            "EVENT_SUBSCRIPTION_NAME",
            "DRY_RUN",
        }
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env={**clean, **env}, capture_output=True, text=True, timeout=30
    )


def test_script_dry_run_builds_the_subscription() -> None:
    app_id = "/subscriptions/0000/resourceGroups/rg-app/providers/Microsoft.Web/sites/regsync-func-x"
    result = run_script(
        "--dry-run",
        FUNCTION_APP_ID=app_id,
        SYSTEM_TOPIC_NAME="gsoci-events",
        SYSTEM_TOPIC_RESOURCE_GROUP="rg-gsoci",
        SOURCE_NAMESPACE="giantswarm",
    )
    assert result.returncode == 0, result.stderr
    command = result.stdout.strip()
    assert command.startswith("az eventgrid system-topic event-subscription create ")
    for fragment in (
        "--system-topic-name gsoci-events",
        "--resource-group rg-gsoci",
        "--endpoint-type azurefunction",
        f"--endpoint {app_id}/functions/on_image_pushed",
        "--included-event-types Microsoft.ContainerRegistry.ImagePushed",
        "--subject-begins-with giantswarm/",
        "--event-delivery-schema eventgridschema",
        "--max-delivery-attempts 30",
        "--event-ttl 1440",
    ):
        assert fragment in command, fragment


def test_script_without_namespace_and_with_name_lookup() -> None:
    result = run_script(
        "--dry-run",
        FUNCTION_APP_NAME="regsync-func-x",
        AZURE_RESOURCE_GROUP="rg-app",
        SYSTEM_TOPIC_NAME="gsoci-events",
        SYSTEM_TOPIC_RESOURCE_GROUP="rg-gsoci",
    )
    assert result.returncode == 0, result.stderr
    assert "--subject-begins-with" not in result.stdout
    endpoint = "/resourceGroups/rg-app/providers/Microsoft.Web/sites/regsync-func-x/functions/on_image_pushed"
    assert endpoint in result.stdout


def test_script_rejects_missing_inputs() -> None:
    result = run_script("--dry-run", SYSTEM_TOPIC_RESOURCE_GROUP="rg-gsoci")
    assert result.returncode != 0
    assert "SYSTEM_TOPIC_NAME" in result.stderr
    result = run_script("--dry-run", SYSTEM_TOPIC_NAME="t", SYSTEM_TOPIC_RESOURCE_GROUP="rg")
    assert result.returncode != 0
    assert "FUNCTION_APP_ID" in result.stderr
    result = run_script(
        "--dry-run", FUNCTION_APP_ID="not-an-id", SYSTEM_TOPIC_NAME="t", SYSTEM_TOPIC_RESOURCE_GROUP="rg"
    )
    assert result.returncode != 0


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
    if not os.access(CHECKOV, os.X_OK):
        make = shutil.which("make")
        assert make, "make is needed to install checkov into .venv-tools"
        subprocess.run([make, "-C", str(ROOT), "-f", "mk/infra.mk", "tools-venv"], check=True, timeout=600)
    assert os.access(CHECKOV, os.X_OK)
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
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 0
    # Every suppression carries a reason, and every suppression in the files was used.
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    for check in report["results"]["skipped_checks"]:
        assert check["check_result"]["suppress_comment"] != "No comment provided", check["check_id"]
    assert skipped == skipped_check_ids(), "stale or unparsed #checkov:skip comment"
    assert elapsed < 60, f"checkov took {elapsed:.0f}s"
