"""The channel layer and everything under it: Redis connections, local fan-out, numbered history.

Nothing here imports the rest of the app: the app imports this. Settings name the layer by its
public path, ``echo.layer.RedisFanoutChannelLayer``.
"""

from echo.layer.channel_layer import RedisFanoutChannelLayer

__all__ = ["RedisFanoutChannelLayer"]
