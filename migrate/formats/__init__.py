"""Pure wire formats and the names client and host share: bytes in, values or events out."""
