"""pandora-gateway: an OpenAI-compatible gateway in front of ChatGPT's web backend-api.

The product code, one package. ``server.py`` at the top of the repository is the entry point;
README.md's Layout section says which module is the one place that knows what.
"""
