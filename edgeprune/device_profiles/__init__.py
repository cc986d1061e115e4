"""Device profiles shipped with edgeprune: one YAML per target."""
