"""Mechanism families. Every module here registers its specs on import; the
registry imports them all, so adding a file is all it takes to add a family."""
