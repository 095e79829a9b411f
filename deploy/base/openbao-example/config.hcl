# OpenBao's own config. The seal comes from the SealBroker's rendered stanza
# (ConfigMap <name>-openbao-seal, mounted at /openbao/sealbroker by the
# webhook), passed as a second -config; it also sets plugin_directory.
ui            = true
disable_mlock = true

storage "raft" {
  path    = "/openbao/data"
  node_id = "openbao-0"
}

listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "0.0.0.0:8201"
  tls_disable     = true
}

api_addr     = "http://openbao-0.openbao.openbao.svc:8200"
cluster_addr = "http://openbao-0.openbao.openbao.svc:8201"
