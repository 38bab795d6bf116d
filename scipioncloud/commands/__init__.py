"""Click commands, one module per group; each is a thin shell over a library module of scipioncloud."""
