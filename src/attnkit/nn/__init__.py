"""Neural-network modules built on attnkit: ``attnkit.nn.vision`` holds the
vision attention modules (NCHW in, NCHW out)."""
