"""Certificates for tidal's mutual TLS (see docs/security.md)."""
