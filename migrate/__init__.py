"""The xfer host daemon, transfer and migration engine."""
