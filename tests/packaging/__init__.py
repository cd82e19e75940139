"""Packaging checks: the Helm chart, the Dockerfiles and the image constraints."""
