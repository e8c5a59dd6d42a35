"""Fleet routing: one inference client over many nodes (services/common/fleet.py declares them).

`nodes.py` speaks to each kind of node; `router.py` picks the node for each request (priority
tier, then the least estimated wait, weighted), fails over before the first token, keeps a
circuit breaker per node and refreshes health, load and models in the background.
"""
