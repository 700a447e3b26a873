// registry-sync: Azure Functions app (Flex Consumption, Python 3.13) that mirrors images from an
// Azure Container Registry to Docker Hub / Alibaba Cloud ACR.
//
// Deployed at resource-group scope into the app's own resource group, and only there: `azd down`
// deletes that whole group. The source registry lives in another group (acrResourceGroupName,
// required; a deployment where the two are the same fails before anything is created) and is
// only read here (`existing`). Its Event Grid system topic and the event subscription are created
// outside this deployment, by scripts/create-event-subscription.sh (azd postdeploy hook).
// infra/README.md has the whole procedure.
targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

@description('Region of the app resources; empty: the resource group\'s (azd passes AZURE_LOCATION).')
param location string = ''

@description('azd environment name (AZURE_ENV_NAME): tags every resource with azd-env-name; empty: no tag.')
param environmentName string = ''

@description('Short prefix for resource names (letters and digits, 3-9 characters).')
@minLength(3)
@maxLength(9)
param namePrefix string = 'regsync'

@description('Tags applied to every resource.')
param tags object = {}

@description('Name of the existing source Azure Container Registry (azd: SOURCE_REGISTRY_NAME). Only read.')
@minLength(5)
@maxLength(50)
param acrName string

@description('Resource group of the source registry (azd: SOURCE_REGISTRY_RESOURCE_GROUP). Required, and never this deployment\'s resource group: `azd down` deletes that whole group.')
@minLength(1)
@maxLength(90)
param acrResourceGroupName string

// The request budget (docs/rate-limits.md): each instance (one Python worker process) sends at
// most targetRequestsPerSecond to the target, so the fleet sends at most
// maximumInstanceCount x targetRequestsPerSecond = 3 x 5 = 15 requests/s, Docker Hub's and
// Alibaba's fleet budget (sync_core/config/registries.py). Raise one, lower the other
// (tests/infra/test_infra.py checks the product).
@description('Flex Consumption: upper bound of instances. Times targetRequestsPerSecond: what the whole app may send to the target (docs/rate-limits.md).')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 3

@description('Flex Consumption: memory per instance in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Key Vault purge protection. Off by default (a test environment\'s deleted vault can be purged to free its name); on for production (infra/README.md): it cannot be turned off again, and nobody can purge a deleted vault or secret before its 90 days are over.')
param keyVaultPurgeProtection bool = false

@description('Log Analytics retention in days.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

@description('Storage resource logs: also StorageRead (reads, the host\'s queue polls included). StorageWrite and StorageDelete are always sent.')
param storageReadLogs bool = true

// ---- private networking (off by default; infra/README.md "Private networking") ----

@description('Storage and Key Vault reachable only through private endpoints in a virtual network that the app integrates with (public network access disabled on both).')
param vnetEnabled bool = false

@description('vnetEnabled: address space of the virtual network.')
param vnetAddressPrefix string = '10.0.0.0/16'

@description('vnetEnabled: subnet of the private endpoints.')
param privateEndpointSubnetPrefix string = '10.0.1.0/24'

@description('vnetEnabled: subnet the app integrates with (delegated to Microsoft.App/environments, as Flex Consumption requires).')
param appSubnetPrefix string = '10.0.2.0/24'

// ---- app settings (see README: every one is an app setting of the same name) ----

@description('SYNC_SCHEDULE: six-field NCRONTAB of the timer that lists the catalog and enqueues work.')
param syncSchedule string = '0 */15 * * * *'

@description('SYNC_QUEUE: name of the Storage queue for work items (its poison queue is <name>-poison).')
@minLength(3)
@maxLength(56)
param syncQueueName string = 'sync-work'

@description('SYNC_EVENT_QUEUE: the work queue of Event Grid events, taken by a worker function of its own (a push never waits behind the backfill of the timer).')
@minLength(3)
@maxLength(56)
param syncEventQueueName string = 'sync-events'

@description('SOURCE_REGISTRY: registry host; empty means the login server of acrName.')
param sourceRegistry string = ''

@description('SOURCE_KIND: acr or oci.')
@allowed([
  'acr'
  'oci'
])
param sourceKind string = 'acr'

@description('SOURCE_NAMESPACE: repository prefix in the source (e.g. giantswarm). Also filters Event Grid subjects.')
param sourceNamespace string = ''

@description('SOURCE_REPOSITORIES: optional comma-separated repository list (needed when the ACR token cannot list the catalog).')
param sourceRepositories string = ''

@description('TARGET_REGISTRY: target registry host, e.g. registry-1.docker.io or registry.cn-shanghai.aliyuncs.com.')
param targetRegistry string = ''

@description('TARGET_NAMESPACE: namespace in the target registry.')
param targetNamespace string = ''

@description('TARGET_SKIP_ARTIFACT_TYPES: comma-separated artifact/config media types the target rejects (e.g. for Alibaba Cloud: application/vnd.oci.empty.v1+json).')
param targetSkipArtifactTypes string = ''

@description('REPOSITORY_INCLUDE: regular expression of repositories to sync (empty: all).')
param repositoryInclude string = ''

@description('REPOSITORY_EXCLUDE: regular expression of repositories to skip.')
param repositoryExclude string = ''

@description('TAG_INCLUDE: regular expression of tags to sync (empty: all).')
param tagInclude string = ''

@description('TAG_EXCLUDE: regular expression of tags to skip.')
param tagExclude string = ''

// The app reads an empty setting as "not set": these are strings so that "no limit" is ''.
@description('TAG_MIN_AGE_DAYS: only tags at least this many days old, a number such as 1 or 0.5 (empty: no limit; ACR source only).')
param tagMinAgeDays string = ''

@description('TAG_MAX_AGE_DAYS: only tags at most this many days old (empty: no limit; ACR source only).')
param tagMaxAgeDays string = ''

@description('TAG_KEEP_LATEST: only the newest N tags per repository, N >= 1 (empty: no limit; ACR source only).')
param tagKeepLatest string = ''

@description('SOURCE_ALLOW_EMPTY: true if an empty source catalog is expected (by default it fails the run: it usually means the token sees nothing).')
param sourceAllowEmpty bool = false

@description('TAG_SEMVER: only tags inside this version range, e.g. ">=1.2.0 <2" (empty: no range).')
param tagSemver string = ''

@description('SYNC_COMPARE: name (only missing tags), recent (also tags and referrers the source changed within SYNC_RECHECK_HOURS, and everything once per SYNC_FULL_CHECK_HOURS) or digest (every tag, every run).')
@allowed([
  'name'
  'recent'
  'digest'
])
param syncCompare string = 'recent'

@description('SYNC_RECHECK_HOURS: with SYNC_COMPARE=recent, what the source changed this recently is compared at each target.')
param syncRecheckHours string = '6'

@description('SYNC_FULL_CHECK_HOURS: with SYNC_COMPARE=recent, each repository is fully compared once per this period.')
param syncFullCheckHours string = '24'

@description('SYNC_REFERRERS: referrers (signatures, SBOMs, attestations) mirrored with their images: all, none, or comma-separated artifact types.')
param syncReferrers string = 'all'

@description('SYNC_CONCURRENCY: parallel copies inside one worker invocation (host.json runs up to batchSize + newBatchThreshold = 3 invocations per instance; they share the instance\'s request budget).')
@minValue(1)
@maxValue(32)
param syncConcurrency int = 4

@description('TARGET_REQUESTS_PER_SECOND: requests per second one instance sends to the target, all its invocations together; the fleet sends maximumInstanceCount times this (default 3 x 5 = 15/s, Docker Hub\'s budget). A number such as 5 or 2.5; empty: the registry\'s default for one process (docs/rate-limits.md).')
param targetRequestsPerSecond string = '5'

@description('TARGET_CONCURRENT_REQUESTS: requests one instance has in flight at the target; empty: the registry\'s default.')
param targetConcurrentRequests string = '8'

@description('SOURCE_REQUESTS_PER_SECOND: requests per second one instance sends to the source; empty: no limit (429s still slow it down). For a Basic ACR (1,000 ReadOps/min for everyone reading it): at most 16 / maximumInstanceCount.')
param sourceRequestsPerSecond string = ''

@description('SOURCE_CONCURRENT_REQUESTS: requests one instance has in flight at the source; empty: no limit.')
param sourceConcurrentRequests string = ''

@description('SYNC_CONFIG: optional path (relative to the app root) of a YAML/JSON file with several targets.')
param syncConfig string = ''

@description('SYNC_TIME_BUDGET_SECONDS: the worker starts no new copy after this; keep it below host.json functionTimeout (30 min).')
@minValue(60)
param syncTimeBudgetSeconds int = 1500

@description('SYNC_DAILY_CHECK: the first timer run of each UTC day runs `check` and logs every finding (alert: check found a failure).')
param syncDailyCheck bool = true

@description('Key Vault secret holding the ACR token name (SOURCE_USERNAME_SECRET).')
param sourceUsernameSecretName string = 'source-username'

@description('Key Vault secret holding the ACR token password (SOURCE_PASSWORD_SECRET).')
param sourcePasswordSecretName string = 'source-password'

@description('Key Vault secret holding the target user name (TARGET_USERNAME_SECRET).')
param targetUsernameSecretName string = 'target-username'

@description('Key Vault secret holding the target password / access token (TARGET_PASSWORD_SECRET).')
param targetPasswordSecretName string = 'target-password'

// ---- alerts (modules/alerts.bicep; infra/README.md "Alerts") ----

@description('Create the alert rules: poison queue not empty, failed runs, no successful timer run, staleness, check found a failure.')
param deployAlerts bool = true

@description('Alerts: e-mail address notified through a new action group (empty: no e-mail; the alerts still show in Azure Monitor).')
param alertEmail string = ''

@description('Alerts: resource id of an existing action group to notify instead (wins over alertEmail).')
param alertActionGroupId string = ''

@description('Alerts: minutes between two timer runs, as syncSchedule says; no successful run for two periods fires the dead-man alert.')
@minValue(5)
@maxValue(720)
param syncSchedulePeriodMinutes int = 15

@description('Alerts: a source change not confirmed at a target for this many minutes fires the staleness alert.')
@minValue(1)
param stalenessThresholdMinutes int = 60

@description('Alerts: failed runs of one trigger within an hour that fire the failure alert.')
@minValue(1)
param failedRunsThreshold int = 3

// ---------------------------------------------------------------------------------------------
// Names and constants
// ---------------------------------------------------------------------------------------------

// The registry's resource group is never this one: `azd down` deletes this whole group. Resource
// group names are case-insensitive. fail() (Bicep 0.33.13 and later) stops the deployment in ARM's
// validation, before any resource is created: every resource carries this value in a tag.
var sourceRegistryResourceGroup = (toLower(acrResourceGroupName) == toLower(resourceGroup().name)) ? fail('acrResourceGroupName names this deployment\'s own resource group; the source registry must be in another group (azd down deletes this one).') : acrResourceGroupName
var environmentTags = empty(environmentName) ? {} : {
  'azd-env-name': environmentName
}
var sourceTags = {
  'registry-sync-source': '${sourceRegistryResourceGroup}/${acrName}'
}
var commonTags = union(tags, environmentTags, sourceTags)
var appLocation = empty(location) ? resourceGroup().location : location

var suffix = uniqueString(subscription().id, resourceGroup().id, namePrefix)
var compactPrefix = toLower(replace(namePrefix, '-', ''))
var functionAppName = '${namePrefix}-func-${suffix}'
var identityName = '${namePrefix}-id-${suffix}'
var vnetName = '${namePrefix}-vnet-${suffix}'
var appSubnetName = 'app'
var planName = '${namePrefix}-plan-${suffix}'
var storageAccountName = take('st${compactPrefix}${suffix}', 24)
var keyVaultName = take('kv${compactPrefix}${suffix}', 24)
var logAnalyticsName = '${namePrefix}-log-${suffix}'
var appInsightsName = '${namePrefix}-appi-${suffix}'
var deploymentContainerName = 'app-package-${take(suffix, 7)}'
var poisonQueueName = '${syncQueueName}-poison'
var eventPoisonQueueName = '${syncEventQueueName}-poison'

// Built-in role definition ids.
var roleStorageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var roleStorageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var roleStorageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var roleKeyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'
var roleMonitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

// ---------------------------------------------------------------------------------------------
// Source registry (existing)
// ---------------------------------------------------------------------------------------------

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: acrName
  scope: resourceGroup(sourceRegistryResourceGroup)
}

// ---------------------------------------------------------------------------------------------
// The app's identity: user-assigned, so that it and its role assignments exist before the app
// (the first package upload to the identity-authenticated deployment container needs them)
// ---------------------------------------------------------------------------------------------

resource appIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: identityName
  location: appLocation
  tags: commonTags
}

// ---------------------------------------------------------------------------------------------
// Monitoring
// ---------------------------------------------------------------------------------------------

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2022-10-01' = {
  name: logAnalyticsName
  location: appLocation
  tags: commonTags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionInDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: appLocation
  tags: commonTags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    // Ingestion only with Entra ID: the app authenticates with its managed identity
    // (APPLICATIONINSIGHTS_AUTHENTICATION_STRING below + Monitoring Metrics Publisher).
    DisableLocalAuth: true
  }
}

// ---------------------------------------------------------------------------------------------
// Storage: host storage (identity-based), work queue + poison queue, deployment container
// ---------------------------------------------------------------------------------------------

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageAccountName
  location: appLocation
  tags: commonTags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    //checkov:skip=CKV_AZURE_43:The name is take('st<prefix><uniqueString>', 24): lower-case letters and digits, 3-24 characters; checkov cannot evaluate the expression.
    //checkov:skip=CKV_AZURE_35:Deny by default follows the parameter vnetEnabled (off by default): without VNet integration the Flex Consumption app reaches its host storage over the public endpoint; access is Entra ID only (allowSharedKeyAccess false).
    //checkov:skip=CKV_AZURE_59:Public network access is disabled when vnetEnabled is true (private endpoints); off by default for the same reason as CKV_AZURE_35.
    //checkov:skip=CKV_AZURE_206:Standard_LRS is enough: the account holds only transient queue messages, timer leases and the deployment package, all rebuilt by redeploying or the next scheduled sync.
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    publicNetworkAccess: vnetEnabled ? 'Disabled' : 'Enabled'
    networkAcls: {
      bypass: vnetEnabled ? 'None' : 'AzureServices'
      defaultAction: vnetEnabled ? 'Deny' : 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      services: {
        blob: {
          enabled: true
        }
        file: {
          enabled: true
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource workQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: syncQueueName
}

// The Functions host creates it on first poison message too; declaring it lets alerts and
// the re-enqueue procedure (README) rely on it from day one.
resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: poisonQueueName
}

// The events' work: its own queue, taken by its own function (sync_event_worker).
resource eventQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: syncEventQueueName
}

resource eventPoisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: eventPoisonQueueName
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

// ---------------------------------------------------------------------------------------------
// Key Vault (RBAC mode). Secrets are set out of band (az keyvault secret set), never here.
// ---------------------------------------------------------------------------------------------

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: keyVaultName
  location: appLocation
  tags: commonTags
  properties: {
    //checkov:skip=CKV_AZURE_109:Deny by default follows the parameter vnetEnabled (off by default): without VNet integration the app is not a trusted Azure service for Key Vault and reads it over the public endpoint. Access is RBAC-only (Key Vault Secrets User for the app identity).
    //checkov:skip=CKV_AZURE_189:Public network access is disabled when vnetEnabled is true (private endpoint); off by default for the same reason as CKV_AZURE_109.
    //checkov:skip=CKV_AZURE_110:Purge protection is the parameter keyVaultPurgeProtection (on for production, infra/README.md); off by default so that a test environment's deleted vault can be purged to free its name. Soft delete (90 days) stays on either way.
    //checkov:skip=CKV_AZURE_42:Recoverable = soft delete + purge protection: soft delete is always on, purge protection follows keyVaultPurgeProtection (same reason as CKV_AZURE_110).
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    // The API accepts only true here (enabling is irreversible); "off" is the property left out.
    enablePurgeProtection: keyVaultPurgeProtection ? true : null
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: vnetEnabled ? 'Disabled' : 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: vnetEnabled ? 'Deny' : 'Allow'
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Audit trail: Key Vault audit events and storage resource logs into the Log Analytics workspace
// (tables AzureDiagnostics for the vault, StorageBlobLogs / StorageQueueLogs / StorageTableLogs)
// ---------------------------------------------------------------------------------------------

// 2021-05-01-preview: the version Microsoft's Bicep reference documents for diagnostic settings
// (the only GA one, 2016-09-01, predates category groups).
resource keyVaultAudit 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: keyVault
  properties: {
    workspaceId: logAnalytics.id
    logs: [
      {
        category: 'AuditEvent'
        enabled: true
      }
    ]
  }
}

var storageLogs = [
  {
    category: 'StorageRead'
    enabled: storageReadLogs
  }
  {
    category: 'StorageWrite'
    enabled: true
  }
  {
    category: 'StorageDelete'
    enabled: true
  }
]

resource blobLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'logs-to-log-analytics'
  scope: blobService
  properties: {
    workspaceId: logAnalytics.id
    logs: storageLogs
  }
}

resource queueLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'logs-to-log-analytics'
  scope: queueService
  properties: {
    workspaceId: logAnalytics.id
    logs: storageLogs
  }
}

resource tableLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'logs-to-log-analytics'
  scope: tableService
  properties: {
    workspaceId: logAnalytics.id
    logs: storageLogs
  }
}

// ---------------------------------------------------------------------------------------------
// Private networking (vnetEnabled): VNet, private endpoints and DNS zones for storage and vault
// ---------------------------------------------------------------------------------------------

module privateNetwork 'modules/private-network.bicep' = if (vnetEnabled) {
  name: 'registry-sync-private-network'
  params: {
    location: appLocation
    tags: commonTags
    namePrefix: namePrefix
    suffix: suffix
    vnetName: vnetName
    appSubnetName: appSubnetName
    vnetAddressPrefix: vnetAddressPrefix
    privateEndpointSubnetPrefix: privateEndpointSubnetPrefix
    appSubnetPrefix: appSubnetPrefix
    storageAccountName: storage.name
    keyVaultName: keyVault.name
  }
}

// ---------------------------------------------------------------------------------------------
// Flex Consumption plan and function app
// ---------------------------------------------------------------------------------------------

resource plan 'Microsoft.Web/serverfarms@2023-12-01' = {
  name: planName
  location: appLocation
  tags: commonTags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    //checkov:skip=CKV_AZURE_225:Zone redundancy for Flex Consumption is limited to some regions; a missed run is caught by the next scheduled sync.
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2023-12-01' = {
  name: functionAppName
  location: appLocation
  // azd deploys the service "sync" (azure.yaml) to the resource with this tag.
  tags: union(commonTags, {
    'azd-service-name': 'sync'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${appIdentity.id}': {}
    }
  }
  // The identity's roles exist before the app starts and before the first package upload (azd
  // deploy right after provisioning), and so does the network when vnetEnabled.
  dependsOn: [
    storageBlobDataOwner
    storageQueueDataContributor
    storageTableDataContributor
    keyVaultSecretsUser
    appInsightsMetricsPublisher
    privateNetwork
  ]
  properties: {
    //checkov:skip=CKV_AZURE_222:Event Grid delivers ImagePushed events to the public endpoint of the app; the only HTTP entry point is the Event Grid webhook (/runtime/webhooks/eventgrid), authorised by the function system key that Event Grid fetches through ARM. There are no HTTP-triggered functions.
    //checkov:skip=CKV_AZURE_17:Event Grid does not present client certificates; requiring them would reject every delivery.
    //checkov:skip=CKV_AZURE_212:Flex Consumption scales to zero by design and work waits in a queue, so no always-ready instances are paid for; a missed timer run is repeated by the next one.
    //checkov:skip=CKV_AZURE_213:No HTTP endpoint to probe (timer, queue and Event Grid triggers only); the Flex Consumption platform manages instance health.
    //checkov:skip=CKV_AZURE_78:The check reads siteConfig.ftpsState, which Flex Consumption rejects (ARM error 51021); FTP publishing is off through the basicPublishingCredentialsPolicies ftp resource (allow false).
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    // Outbound traffic (storage, vault, registries) through the VNet when vnetEnabled.
    virtualNetworkSubnetId: vnetEnabled ? resourceId('Microsoft.Network/virtualNetworks/subnets', vnetName, appSubnetName) : null
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: appIdentity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      // The Python the worker-contract tier tests (mk/worker.mk WORKER_PY_VERSION); see infra/README.md.
      runtime: {
        name: 'python'
        version: '3.13'
      }
    }
    // No ftpsState: Flex Consumption rejects it (ARM error 51021); the ftp publishing policy below
    // turns FTP off.
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
      // Flex Consumption: FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION are not app
      // settings (functionAppConfig.runtime replaces them) and must not be set.
      appSettings: [
        // Host storage through the user-assigned identity: no connection string, no account key.
        {
          name: 'AzureWebJobsStorage__accountName'
          value: storage.name
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: appIdentity.properties.clientId
        }
        // DefaultAzureCredential (Key Vault in sync_core/secrets.py) picks the user-assigned
        // identity by this client id; without it the app has no identity to use.
        {
          name: 'AZURE_CLIENT_ID'
          value: appIdentity.properties.clientId
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: appInsights.properties.ConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'ClientId=${appIdentity.properties.clientId};Authorization=AAD'
        }
        // host.json telemetryMode OpenTelemetry: the Python worker exports its own logs and metrics
        // (azure-monitor-opentelemetry, requirements.txt) instead of the host relaying them.
        {
          name: 'PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY'
          value: 'true'
        }
        {
          name: 'SYNC_SCHEDULE'
          value: syncSchedule
        }
        {
          name: 'SYNC_QUEUE'
          value: syncQueueName
        }
        {
          name: 'SYNC_EVENT_QUEUE'
          value: syncEventQueueName
        }
        {
          name: 'SOURCE_REGISTRY'
          value: empty(sourceRegistry) ? registry.properties.loginServer : sourceRegistry
        }
        {
          name: 'SOURCE_KIND'
          value: sourceKind
        }
        {
          name: 'SOURCE_NAMESPACE'
          value: sourceNamespace
        }
        {
          name: 'SOURCE_REPOSITORIES'
          value: sourceRepositories
        }
        {
          name: 'TARGET_REGISTRY'
          value: targetRegistry
        }
        {
          name: 'TARGET_NAMESPACE'
          value: targetNamespace
        }
        {
          name: 'TARGET_SKIP_ARTIFACT_TYPES'
          value: targetSkipArtifactTypes
        }
        {
          name: 'REPOSITORY_INCLUDE'
          value: repositoryInclude
        }
        {
          name: 'REPOSITORY_EXCLUDE'
          value: repositoryExclude
        }
        {
          name: 'TAG_INCLUDE'
          value: tagInclude
        }
        {
          name: 'TAG_EXCLUDE'
          value: tagExclude
        }
        {
          name: 'TAG_MIN_AGE_DAYS'
          value: tagMinAgeDays
        }
        {
          name: 'TAG_MAX_AGE_DAYS'
          value: tagMaxAgeDays
        }
        {
          name: 'TAG_KEEP_LATEST'
          value: tagKeepLatest
        }
        {
          name: 'TAG_SEMVER'
          value: tagSemver
        }
        {
          name: 'SOURCE_ALLOW_EMPTY'
          value: string(sourceAllowEmpty)
        }
        {
          name: 'SYNC_COMPARE'
          value: syncCompare
        }
        {
          name: 'SYNC_RECHECK_HOURS'
          value: syncRecheckHours
        }
        {
          name: 'SYNC_FULL_CHECK_HOURS'
          value: syncFullCheckHours
        }
        {
          name: 'SYNC_REFERRERS'
          value: syncReferrers
        }
        {
          name: 'SYNC_CONCURRENCY'
          value: string(syncConcurrency)
        }
        {
          name: 'TARGET_REQUESTS_PER_SECOND'
          value: targetRequestsPerSecond
        }
        {
          name: 'TARGET_CONCURRENT_REQUESTS'
          value: targetConcurrentRequests
        }
        {
          name: 'SOURCE_REQUESTS_PER_SECOND'
          value: sourceRequestsPerSecond
        }
        {
          name: 'SOURCE_CONCURRENT_REQUESTS'
          value: sourceConcurrentRequests
        }
        {
          name: 'SYNC_CONFIG'
          value: syncConfig
        }
        {
          name: 'SYNC_TIME_BUDGET_SECONDS'
          value: string(syncTimeBudgetSeconds)
        }
        {
          name: 'SYNC_DAILY_CHECK'
          value: string(syncDailyCheck)
        }
        {
          name: 'KEY_VAULT_URL'
          value: keyVault.properties.vaultUri
        }
        {
          name: 'SOURCE_USERNAME_SECRET'
          value: sourceUsernameSecretName
        }
        {
          name: 'SOURCE_PASSWORD_SECRET'
          value: sourcePasswordSecretName
        }
        {
          name: 'TARGET_USERNAME_SECRET'
          value: targetUsernameSecretName
        }
        {
          name: 'TARGET_PASSWORD_SECRET'
          value: targetPasswordSecretName
        }
      ]
    }
  }
}

// No basic-auth publishing: deployments go through Entra ID (azd / func publish / az).
resource ftpPublishingPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2023-12-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishingPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2023-12-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

// ---------------------------------------------------------------------------------------------
// Role assignments for the app's identity (before the app: it depends on them)
// ---------------------------------------------------------------------------------------------

// Deployment package container, timer leases and host locks (blob).
resource storageBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appIdentity.id, roleStorageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleStorageBlobDataOwner)
    principalId: appIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Queue trigger (read, update, delete, move to poison) and queue output (send): the
// contributor role covers Data Message Processor and Data Message Sender.
resource storageQueueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appIdentity.id, roleStorageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleStorageQueueDataContributor)
    principalId: appIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The timer keeps its state per (repository, target) in a table of this account (sync_core/azure/state.py).
resource storageTableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appIdentity.id, roleStorageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleStorageTableDataContributor)
    principalId: appIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource keyVaultSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, appIdentity.id, roleKeyVaultSecretsUser)
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleKeyVaultSecretsUser)
    principalId: appIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource appInsightsMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, appIdentity.id, roleMonitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleMonitoringMetricsPublisher)
    principalId: appIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// ---------------------------------------------------------------------------------------------
// Alerts: log search alerts on Application Insights (+ an action group when alertEmail is set)
// ---------------------------------------------------------------------------------------------

module alerts 'modules/alerts.bicep' = if (deployAlerts) {
  name: 'registry-sync-alerts'
  params: {
    location: appLocation
    tags: commonTags
    namePrefix: namePrefix
    suffix: suffix
    appInsightsId: appInsights.id
    alertEmail: alertEmail
    actionGroupId: alertActionGroupId
    syncSchedulePeriodMinutes: syncSchedulePeriodMinutes
    stalenessThresholdMinutes: stalenessThresholdMinutes
    failedRunsThreshold: failedRunsThreshold
  }
}

// ---------------------------------------------------------------------------------------------
// Outputs (azd stores them in the environment; scripts/create-event-subscription.sh reads them)
// ---------------------------------------------------------------------------------------------

output FUNCTION_APP_NAME string = functionApp.name
output FUNCTION_APP_ID string = functionApp.id
output FUNCTION_APP_PRINCIPAL_ID string = appIdentity.properties.principalId
output APP_IDENTITY_NAME string = appIdentity.name
output APP_IDENTITY_CLIENT_ID string = appIdentity.properties.clientId
output KEY_VAULT_NAME string = keyVault.name
output KEY_VAULT_URI string = keyVault.properties.vaultUri
output STORAGE_ACCOUNT_NAME string = storage.name
output SYNC_QUEUE string = syncQueueName
output SYNC_POISON_QUEUE string = poisonQueueName
output SYNC_EVENT_QUEUE string = syncEventQueueName
output SYNC_EVENT_POISON_QUEUE string = eventPoisonQueueName
output SOURCE_REGISTRY_NAME string = acrName
output SOURCE_REGISTRY_RESOURCE_GROUP string = sourceRegistryResourceGroup
output SOURCE_NAMESPACE string = sourceNamespace
output APPLICATIONINSIGHTS_NAME string = appInsights.name
output LOG_ANALYTICS_WORKSPACE_NAME string = logAnalytics.name
