"""The root of every error a user can cause: `LookalikeError`.

Each part of the loop names its own errors (`ImageError`, `StoreError`, …) next to the code that
raises them; all derive from `LookalikeError`, whose message is one sentence a person can act on.
The command line and the pages catch the root and show that sentence, never a traceback.
"""


class LookalikeError(Exception):
    """Something a user did (a bad file, an unknown model, an empty gallery) that the product
    refuses with a sentence they can act on."""
