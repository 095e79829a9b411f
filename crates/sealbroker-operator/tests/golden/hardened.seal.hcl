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
