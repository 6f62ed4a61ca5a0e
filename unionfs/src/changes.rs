//! Changes recorded in an upper directory (what `diff` and `commit` read), parsed in the one place that knows the upper format.
