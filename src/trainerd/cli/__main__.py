"""`python -m trainerd.cli`: the same as the `trainerd` console script."""

from trainerd.cli import main

main()
