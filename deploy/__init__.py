"""Deploying the silos with Flower's deployment engine: certificates, SuperNode keys, a local launcher."""
