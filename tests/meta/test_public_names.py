"""What `dir(numpy_gpt2)` and tab completion show a learner: the public API (__all__) and the
package's own modules, nothing the package itself imported."""

import os

import numpy_gpt2


def test_dir_is_the_api_and_the_modules():
    package = os.path.dirname(numpy_gpt2.__file__)
    modules = {name.removesuffix(".py") for name in os.listdir(package)
               if not name.startswith("_") and (name.endswith(".py") or os.path.isdir(os.path.join(package, name)))}
    public = {name for name in dir(numpy_gpt2) if not name.startswith("_")}
    assert set(numpy_gpt2.__all__) <= public
    assert public - set(numpy_gpt2.__all__) <= modules, public - set(numpy_gpt2.__all__) - modules
