// registry-sync alerts: five log search alerts on Application Insights and, optionally, an action
// group that e-mails an operator. Deployed by main.bicep (deployAlerts).
//
// Each Kusto query is written once, below; infra/README.md ("Alerts") shows the same text so that
// an operator can run it by hand (tests/infra/test_monitoring.py keeps the two equal). The queries read
// what the app sends with host.json telemetryMode OpenTelemetry:
//   customMetrics  the OpenTelemetry instruments of sync_core/report/metrics.py (registry_sync.*)
//   traces         the decision lines of sync_core/logs.py (the timer's decision=poison_depth)
targetScope = 'resourceGroup'

@description('Region of the alert rules (that of Application Insights).')
param location string

@description('Tags applied to every resource.')
param tags object = {}

@description('Prefix of the resource names.')
param namePrefix string

@description('Suffix of the resource names (uniqueString of the deployment).')
param suffix string

@description('Resource id of the Application Insights component the queries run on.')
param appInsightsId string

@description('E-mail address the new action group notifies; empty: no action group is created (unless actionGroupId is given, the alerts then only show in Azure Monitor).')
param alertEmail string = ''

@description('Resource id of an existing action group to notify (wins over alertEmail).')
param actionGroupId string = ''

@description('Minutes between two timer runs (SYNC_SCHEDULE). Dead man: no successful timer run for two periods.')
@minValue(5)
@maxValue(720)
param syncSchedulePeriodMinutes int = 15

@description('Staleness alert: a source change not yet confirmed at a target for more than this many minutes.')
@minValue(1)
param stalenessThresholdMinutes int = 60

@description('Failure alert: this many failed runs of one trigger (timer, event, worker) within an hour.')
@minValue(1)
param failedRunsThreshold int = 3

// ---------------------------------------------------------------------------------------------
// The queries (README: "Alerts")
// ---------------------------------------------------------------------------------------------

// The timer logs the poison queue's approximate depth every run: "... | decision=poison_depth
// queue=<name> count=<n>". The message text is read, not customDimensions: it is the same in
// every telemetry mode.
var poisonQuery = '''
traces
| where message contains "decision=poison_depth"
| extend queue = extract(@"\bqueue=(\S+)", 1, message), depth = toint(extract(@"\bcount=(\d+)", 1, message))
| where isnotempty(queue) and isnotnull(depth)
| summarize arg_max(timestamp, depth) by queue
| project queue, depth
'''

// Failed runs per trigger: the run.duration histogram counts every run, ok=false the failed ones.
var failedRunsQuery = '''
customMetrics
| where name == "registry_sync.run.duration"
| extend trigger = tostring(customDimensions.trigger), ok = tolower(tostring(customDimensions.ok))
| where ok == "false"
| summarize failed_runs = sum(valueCount) by trigger
'''

// Dead man: successful timer runs in the window; none is the alert.
var deadManQuery = '''
customMetrics
| where name == "registry_sync.run.duration"
| where tostring(customDimensions.trigger) == "timer" and tolower(tostring(customDimensions.ok)) == "true"
| project timestamp, runs = valueCount
'''

// Staleness per target: the oldest source change not yet confirmed there, as each timer run
// measured it (a histogram: valueMax). Backfill does not raise it; a delay, a failing
// repository or a stopped pipeline does.
var stalenessQuery = '''
customMetrics
| where name == "registry_sync.staleness"
| extend target = tostring(customDimensions.target)
| summarize max_staleness_seconds = max(valueMax) by target
'''

// The daily check (sync_core/azure/daily_check.py) counts each finding: status=fail is a
// credential, right, secret or registry rule that will make copies fail. One run a day: the window
// is a day, so a failure keeps the alert up until a day's check passes.
var checkQuery = '''
customMetrics
| where name == "registry_sync.check"
| extend subject = tostring(customDimensions.subject), status = tostring(customDimensions.status)
| where status == "fail"
| summarize failures = sum(valueSum) by subject
'''

// ---------------------------------------------------------------------------------------------
// Windows and the action group
// ---------------------------------------------------------------------------------------------

// Two schedule periods hold at least one timer run (and its poison_depth line) when all is well.
var timerWindowMinutes = 2 * syncSchedulePeriodMinutes
var timerWindow = 'PT${timerWindowMinutes}M'
var timerFrequency = 'PT${min(15, timerWindowMinutes)}M'

var createActionGroup = empty(actionGroupId) && !empty(alertEmail)
var notify = empty(actionGroupId) ? (createActionGroup ? [
  actionGroup.id
] : []) : [
  actionGroupId
]

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (createActionGroup) {
  name: '${namePrefix}-ag-${suffix}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: take(namePrefix, 12)
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

// ---------------------------------------------------------------------------------------------
// The rules
// ---------------------------------------------------------------------------------------------

resource poisonAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-alert-poison-${suffix}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'registry-sync: poison queue not empty'
    description: 'Messages the worker gave up on wait in the poison queue. List them with python -m sync_core poison list, fix the cause, then replay or drop them (infra/README.md, Poison queue).'
    severity: 2
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: timerFrequency
    windowSize: timerWindow
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: poisonQuery
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'depth'
          dimensions: [
            {
              name: 'queue'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: notify
    }
  }
}

resource failedRunsAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-alert-failures-${suffix}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'registry-sync: failed runs'
    description: 'Runs of one trigger failed ${failedRunsThreshold} times or more within an hour (a worker failure is retried, then poisoned). The decision lines say what failed: traces | where customDimensions.decision == "failed".'
    severity: 2
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT1H'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: failedRunsQuery
          timeAggregation: 'Total'
          metricMeasureColumn: 'failed_runs'
          dimensions: [
            {
              name: 'trigger'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThanOrEqual'
          threshold: failedRunsThreshold
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: notify
    }
  }
}

resource deadManAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-alert-deadman-${suffix}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'registry-sync: no successful timer run'
    description: 'No successful timer run for ${timerWindowMinutes} minutes (two schedule periods): the app is stopped, failing, or sends no telemetry.'
    severity: 1
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: timerFrequency
    windowSize: timerWindow
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: deadManQuery
          timeAggregation: 'Count'
          operator: 'LessThan'
          threshold: 1
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: notify
    }
  }
}

resource stalenessAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-alert-staleness-${suffix}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'registry-sync: mirror staleness'
    description: 'A source change has not been confirmed at a target for more than ${stalenessThresholdMinutes} minutes (a delay, a failing repository, a stopped pipeline; backfill does not count).'
    severity: 3
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT1H'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: stalenessQuery
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'max_staleness_seconds'
          dimensions: [
            {
              name: 'target'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: stalenessThresholdMinutes * 60
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: notify
    }
  }
}

resource checkAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-alert-check-${suffix}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'registry-sync: check found a failure'
    description: 'The daily check found something that will make copies fail (a credential refused or expired, a right lost, a Key Vault secret missing, a name a target refuses). Each finding says its fix: traces | where customDimensions.decision == "check" and customDimensions.status == "fail"; or run python -m sync_core check.'
    severity: 2
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'P1D'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: checkQuery
          timeAggregation: 'Total'
          metricMeasureColumn: 'failures'
          dimensions: [
            {
              name: 'subject'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: notify
    }
  }
}

output actionGroupIds array = notify
output alertRuleNames array = [
  poisonAlert.name
  failedRunsAlert.name
  deadManAlert.name
  stalenessAlert.name
  checkAlert.name
]
