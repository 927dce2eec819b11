"""The layer's own events, which it puts in a consumer's queue (the consumer has a handler for each)."""

# Put in a consumer's queue when that consumer fell too far behind: its older events were dropped.
OVERFLOW_EVENT = "layer.overflow"

# Sent to every local consumer of the groups whose subscription came back after a Redis outage.
RESYNC_EVENT = "layer.resync"
