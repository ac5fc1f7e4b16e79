"""Moving VDIs over HTTP: xapi's export and import endpoints, their plans and their bodies."""
