"""What mdmgen writes: the artifact registry (``registry``: every kind of file, who gets it, where it is
installed, how to read it back) and one pure emitter per format. Same input in, same bytes out."""
