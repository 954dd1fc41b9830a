"""HTTP plumbing every bridge service shares: JWT bearer tokens, problem details, a guarded server.

The adapters, ops and the health and metrics ports serve through these; none of them belongs to
one service, so they live below all three.
"""
