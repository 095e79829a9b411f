# Rendered by sealbroker-operator from SealBroker openbao/openbao. Pass it to OpenBao as an extra -config file.
plugin_directory = "/openbao/plugins"

plugin "kms" "sealbroker" {
  command   = "sealbroker"
  args      = ["kms-plugin"]
  sha256sum = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
}

seal "sealbroker" {
  endpoint = "unix:///run/sealbroker/sealbroker.sock"
  key_name = "openbao-unseal"
  aad      = "cluster-prod-1"
}

# spec.openbao.selfInit: OpenBao runs these once, on its first start, then revokes the
# root token it used; none is ever returned or stored.
initialize "sealbroker" {
  request "admin-policy" {
    operation = "update"
    path      = "sys/policies/acl/admin"
    data      = {
      "policy" = "path \"*\" { capabilities = [\"create\", \"read\", \"update\", \"delete\", \"list\", \"sudo\"] }"
    }
  }
  request "enable-kubernetes-auth" {
    operation = "update"
    path      = "sys/auth/kubernetes"
    data      = {
      "type" = "kubernetes"
    }
  }
  request "kubernetes-auth-config" {
    operation = "update"
    path      = "auth/kubernetes/config"
    data      = {
      "kubernetes_host" = "https://kubernetes.default.svc"
    }
  }
  request "platform-admins" {
    operation = "update"
    path      = "auth/kubernetes/role/platform-admin"
    data      = {
      "bound_service_account_names" = ["platform-admin"]
      "bound_service_account_namespaces" = ["platform"]
      "token_policies" = ["admin"]
      "token_ttl" = "15m"
    }
  }
}
