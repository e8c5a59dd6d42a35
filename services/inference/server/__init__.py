"""The inference server: the gRPC servicer over the engine, which resolves slots, queues requests,
loads models and adapters, and caches responses."""
