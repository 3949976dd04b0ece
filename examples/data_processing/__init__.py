"""The data-processing use case (examples/agents/data-processing.yaml): its tool, the
local rate-limited API it talks to, and a script that runs the whole thing."""
