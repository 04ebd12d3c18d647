"""What the tests share: oracles, checkpoint builders, the command runner, tolerances.

No test module imports another; what two of them need lives here (or, for fixtures, in a
conftest.py). REPO_ROOT: the repository's root directory (a str).
"""

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
