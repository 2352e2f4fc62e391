"""`python -m backpropagate_core.cli.run ...` is `backprop ...` (used by the launcher)."""


from backpropagate_core.cli import main

if __name__ == "__main__":
    main()
