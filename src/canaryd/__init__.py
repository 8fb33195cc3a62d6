"""canaryd: canary deployments for applications on ordinary servers behind nginx, HAProxy or Traefik."""

__version__ = "0.1.0"
