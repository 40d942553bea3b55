"""Suite definitions (TOML), shipped inside the package as revbench.suites."""
