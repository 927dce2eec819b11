"""Publishing: the one way to send data to browsers (``publish``, ``apublish``, ``Publisher``), the data
sources of ``push_data``, and the HTTP publish API."""

from echo.publishing.broadcast import Publisher, apublish, publish

__all__ = ["Publisher", "apublish", "publish"]
