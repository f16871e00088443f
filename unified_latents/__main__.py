"""`python -m unified_latents ...` (also what `torchrun -m unified_latents` runs)."""

from .cli.main import main

if __name__ == "__main__":
    main()
