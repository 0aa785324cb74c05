import sys

from memprune.cli import main

sys.exit(main())
