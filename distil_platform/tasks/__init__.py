"""Task definitions: the YAML specs beside this file, their loading (spec), data sources, validation and prompts."""
