"""Agent World's inhabitants: agents that observe the world through a node's API, decide, and act
only through signed actions, like any other client of the chain.

- ``decision``: the decision types every policy returns and the mapping of a decision to a signed
  action; ``parse``: the ``agent_submit_decision`` tool schema and the strict parser of model output.
- ``runtime``: runs N agents against any node (keys, observation, memory, submission, retries).
- ``scripted``: deterministic policies (explorers, traders, a module builder).
- ``llm``: the LLM policy over any OpenAI-compatible chat-completions endpoint.
"""
