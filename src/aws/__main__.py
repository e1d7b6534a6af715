import sys

from aws.cli import main

sys.exit(main())
