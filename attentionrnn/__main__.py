import sys

from attentionrnn.cli import main

sys.exit(main())
