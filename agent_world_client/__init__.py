"""The client library of a node's HTTP JSON API: ``NodeClient`` (async), ``SyncNodeClient``
(blocking), agent key files (``AgentKey``) and the errors they raise. It imports the runtime (for
signed actions) and the node's document schema (``agent_world_node.schema``), never the daemon."""
