"""Pattern sets (placeholder: being written)."""
class PatternSet:  # noqa: D101
    pass
