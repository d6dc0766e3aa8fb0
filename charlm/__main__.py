"""`python -m charlm` (also what torchrun runs: `torchrun ... -m charlm train ...`)."""

from .cli import main

if __name__ == "__main__":
    main()
