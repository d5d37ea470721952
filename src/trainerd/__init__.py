"""trainerd: keeps a language model learning from files dropped into a folder."""

__version__ = "0.1.0"
