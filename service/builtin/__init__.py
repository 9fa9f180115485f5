"""The service's own behaviour, as plugins registered before any other."""
