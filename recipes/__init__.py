"""The shipped recipes: DataComp's baselines as YAML files (package data, see README.md)."""
