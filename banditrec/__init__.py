"""banditrec: contextual-bandit recommendation carousels."""
