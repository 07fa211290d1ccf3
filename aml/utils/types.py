"""Type aliases shared by the package."""

import os
from typing import Union

#: a file or folder as the user gives it: a string or a path
PathLike = Union[str, "os.PathLike[str]"]
