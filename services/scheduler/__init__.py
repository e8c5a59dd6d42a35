"""Async jobs on NATS JetStream, with job records in PostgreSQL."""
