import sys

from specfusion.cli import main

sys.exit(main())
