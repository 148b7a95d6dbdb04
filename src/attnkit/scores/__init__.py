"""Score modifiers (bias terms added to q.k) and normalisers (what replaces the row softmax)."""
