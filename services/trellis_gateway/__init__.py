"""The hook-gateway: the REST API, approval and webhook callbacks, live streams, auth."""
