import sys

from vae_study.cli import main

sys.exit(main())
