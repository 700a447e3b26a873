// registry-sync private networking (main.bicep, vnetEnabled): a virtual network with a subnet the
// Flex Consumption app integrates with and a subnet of private endpoints for the storage account
// (blob, queue, table) and the Key Vault, each endpoint registered in a private DNS zone linked
// to the network. All in the app's resource group: `azd down` deletes them with the app.
//
// main.bicep disables public network access on the storage account and the vault when this
// module is deployed, so the app reaches both through these endpoints only.
targetScope = 'resourceGroup'

@description('Region of the network and the endpoints (that of the app).')
param location string

@description('Tags applied to every resource.')
param tags object = {}

@description('Prefix of the resource names.')
param namePrefix string

@description('Suffix of the resource names (uniqueString of the deployment).')
param suffix string

@description('Name of the virtual network (main.bicep derives the app subnet id from it).')
param vnetName string

@description('Name of the subnet the app integrates with.')
param appSubnetName string = 'app'

@description('Address space of the virtual network.')
param vnetAddressPrefix string

@description('Subnet of the private endpoints.')
param privateEndpointSubnetPrefix string

@description('Subnet the app integrates with.')
param appSubnetPrefix string

@description('The app\'s storage account (host storage, queues, deployment package).')
param storageAccountName string

@description('The Key Vault holding the registry credentials.')
param keyVaultName string

var privateEndpointSubnetName = 'private-endpoints'

// One private endpoint per target sub-resource (groupId of resourceId), each with its DNS zone. The vault zone
// is privatelink.vaultcore.azure.net in the public cloud (keyvaultDns is .vault.azure.net).
var privateLinks = [
  {
    groupId: 'blob'
    resourceId: storage.id
    zone: 'privatelink.blob.${environment().suffixes.storage}'
  }
  {
    groupId: 'queue'
    resourceId: storage.id
    zone: 'privatelink.queue.${environment().suffixes.storage}'
  }
  {
    groupId: 'table'
    resourceId: storage.id
    zone: 'privatelink.table.${environment().suffixes.storage}'
  }
  {
    groupId: 'vault'
    resourceId: keyVault.id
    zone: 'privatelink${replace(environment().suffixes.keyvaultDns, '.vault.', '.vaultcore.')}'
  }
]

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: vnetName
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        vnetAddressPrefix
      ]
    }
    subnets: [
      {
        name: privateEndpointSubnetName
        properties: {
          addressPrefix: privateEndpointSubnetPrefix
          privateEndpointNetworkPolicies: 'Disabled'
        }
      }
      {
        name: appSubnetName
        properties: {
          addressPrefix: appSubnetPrefix
          // Flex Consumption integrates through a subnet delegated to Microsoft.App/environments.
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
    ]
  }
}

resource zones 'Microsoft.Network/privateDnsZones@2020-06-01' = [
  for link in privateLinks: {
    name: link.zone
    location: 'global'
    tags: tags
  }
]

resource zoneLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = [
  for (link, i) in privateLinks: {
    parent: zones[i]
    name: vnetName
    location: 'global'
    tags: tags
    properties: {
      registrationEnabled: false
      virtualNetwork: {
        id: vnet.id
      }
    }
  }
]

resource endpoints 'Microsoft.Network/privateEndpoints@2024-05-01' = [
  for link in privateLinks: {
    name: '${namePrefix}-pe-${link.groupId}-${suffix}'
    location: location
    tags: tags
    properties: {
      subnet: {
        id: '${vnet.id}/subnets/${privateEndpointSubnetName}'
      }
      privateLinkServiceConnections: [
        {
          name: link.groupId
          properties: {
            privateLinkServiceId: link.resourceId
            groupIds: [
              link.groupId
            ]
          }
        }
      ]
    }
  }
]

resource zoneGroups 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = [
  for (link, i) in privateLinks: {
    parent: endpoints[i]
    name: 'default'
    properties: {
      privateDnsZoneConfigs: [
        {
          name: link.groupId
          properties: {
            privateDnsZoneId: zones[i].id
          }
        }
      ]
    }
  }
]

output vnetId string = vnet.id
output appSubnetId string = '${vnet.id}/subnets/${appSubnetName}'
output privateEndpointSubnetId string = '${vnet.id}/subnets/${privateEndpointSubnetName}'
