import sys

from conclave.cli.main import main

sys.exit(main())
