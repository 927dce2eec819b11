"""The echo app: a WebSocket that echoes frames and relays data pushed through the channel layer."""
