"""The S3 protocol: a shell over the engine beside the native API, on its own address."""
