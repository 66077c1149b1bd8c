import sys

from recfm.platform.cli import main

sys.exit(main())
