"""Agent World node daemon: network, consensus core, mempool, block store and execution driver."""
