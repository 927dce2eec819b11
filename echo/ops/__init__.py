"""What operators look at: /metrics and /healthz, and the admin's live view."""
