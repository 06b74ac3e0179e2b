"""imagesync: copy container images between registries, driven by one config file."""

__version__ = "0.1.0"
