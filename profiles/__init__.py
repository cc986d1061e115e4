"""Device profiles shipped with edgeprune (one YAML per target); installed as ``edgeprune.device_profiles``."""
