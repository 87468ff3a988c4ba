import sys

from tuneplan.cli import main

sys.exit(main())
