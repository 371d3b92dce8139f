"""The errors of models/ that the family folders raise too (a leaf module: `families` loads the
family folders by name, so they must not import it)."""


class UnsupportedModelError(ValueError):
    """The checkpoint's model_type is not a supported family."""
