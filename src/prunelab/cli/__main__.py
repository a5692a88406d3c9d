import sys

from prunelab.cli import main

sys.exit(main())
