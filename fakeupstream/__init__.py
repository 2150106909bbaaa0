"""The demo/fake upstream: a PandoraNext-style backend-api that answers from scripts."""
