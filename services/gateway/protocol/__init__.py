"""The OpenAI wire models, split by endpoint family (as vLLM's entrypoints are): each request
with its one mapping to a service's domain types (`to_domain`), which own the mapping to
protobuf, and each response built from domain results. Nothing here duplicates a protobuf
message by hand."""
