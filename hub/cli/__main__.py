"""`python -m hub.cli`: the `lorastack` command without its console script."""
from hub.cli import main

if __name__ == "__main__":
    main(prog_name="lorastack")
