"""The ``xfer`` command line."""
