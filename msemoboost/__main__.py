"""`python -m msemoboost predict|explain|tsne ...`"""

import sys

from .cli import main

sys.exit(main())
