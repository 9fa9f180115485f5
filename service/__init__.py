"""The data-pipeline task service. Plugins import only ``service.plugin_api``."""
