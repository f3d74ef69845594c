"""Broken and hostile submissions: the autograder must grade each one, below full marks, without crashing."""
