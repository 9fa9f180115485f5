"""Optional plugins, enabled by name in settings.toml: ``[plugins] enabled``."""
