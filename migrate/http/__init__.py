"""The host daemon's HTTP/1.1 layer: an h11 server on trio with routing and limits."""
