// Event Grid system topic on the existing source registry, and (optionally) the event
// subscription that delivers Microsoft.ContainerRegistry.ImagePushed to the function
// on_image_pushed.
//
// Deployed by main.bicep with `scope: resourceGroup(acrResourceGroupName)`: a system topic
// lives in the resource group of its source resource, in the same region.
// An Azure resource can have only one system topic: if the registry already has one, pass its
// name as systemTopicName (the PUT below is then an idempotent update).

@description('Name of the existing Azure Container Registry (the source), in this resource group.')
param acrName string

@description('Name of the Event Grid system topic for the registry.')
param systemTopicName string

@description('Tags for the system topic.')
param tags object = {}

@description('Create the event subscription as well. Leave false on the first deployment: the endpoint (the function on_image_pushed) must exist first, i.e. the code must be deployed.')
param deployEventSubscription bool = false

@description('Resource id of the function app (Microsoft.Web/sites). Only used when deployEventSubscription is true.')
param functionAppId string = ''

@description('Name of the event subscription.')
param eventSubscriptionName string = 'registry-sync-image-pushed'

@description('Only events whose subject (<repository>:<tag>) begins with "<sourceNamespace>/" are delivered. Empty: every repository.')
param sourceNamespace string = ''

@description('Event Grid delivery attempts before an event is dropped (the timer-driven full sync catches what is lost).')
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@description('Event time to live in minutes (at most 1440, 24 h).')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: acrName
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: systemTopicName
  location: registry.location
  tags: tags
  properties: {
    source: registry.id
    topicType: 'Microsoft.ContainerRegistry.Registries'
  }
}

resource imagePushedSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = if (deployEventSubscription) {
  parent: systemTopic
  name: eventSubscriptionName
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionAppId}/functions/on_image_pushed'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.ContainerRegistry.ImagePushed'
      ]
      subjectBeginsWith: empty(sourceNamespace) ? '' : '${sourceNamespace}/'
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
  }
}

output systemTopicName string = systemTopic.name
output systemTopicId string = systemTopic.id
output registryLoginServer string = registry.properties.loginServer
