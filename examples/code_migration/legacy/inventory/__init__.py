"""A small inventory package, in the middle of a naming migration."""
