"""The WebSocket side: what the consumer (``echo.consumers``) uses to admit a connection, relay
pushed frames to it, limit what its client sends, and count it."""
