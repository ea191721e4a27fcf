"""The one resilience core: knows no provider by name."""
