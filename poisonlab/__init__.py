"""poisonlab: data-poisoning and backdoor attacks on image classifiers, measured honestly, with the defenses that catch them."""

__version__ = "0.1.0"
