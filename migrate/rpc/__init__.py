"""The XenAPI-compatible RPC: wire codecs, the dispatcher and one module per class."""
