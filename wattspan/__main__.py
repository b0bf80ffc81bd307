import sys

from wattspan.cli import main

sys.exit(main())
