"""NATS plumbing: embedded server, identities and permissions, provisioning, transport, subjects."""
