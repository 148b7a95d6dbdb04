"""Execution engines: dense SDPA dispatch, chunked online softmax, and (from other modules) block-sparse and linear scans."""
