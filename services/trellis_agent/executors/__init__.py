"""Executors: the backends that run one activity (process, docker, kubernetes, http, function, iac)."""
