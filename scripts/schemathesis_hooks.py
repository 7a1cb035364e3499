"""Schemathesis hooks for scripts/schemathesis.sh: DoH bodies are raw bytes."""
import schemathesis

schemathesis.serializer.alias("application/dns-message", "application/octet-stream")
