"""What the jobs read: labelled tasks (GLUE, your own files) and plain texts."""
