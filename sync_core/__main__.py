import sys

from sync_core.cli.main import main

sys.exit(main())
