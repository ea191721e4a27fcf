"""S3 storage against moto's real S3 server on loopback."""
