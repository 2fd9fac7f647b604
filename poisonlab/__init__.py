"""poisonlab: data-poisoning and backdoor attacks on image classifiers, measured honestly, and the defenses."""

__version__ = "0.1.0"
