"""`python -m aa_keras.visualize`: see `aa_keras.visualize.cli`."""

from aa_keras.visualize.cli import run_main

if __name__ == "__main__":
    run_main()
