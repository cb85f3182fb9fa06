"""Built-in device plugins, one folder per family."""
