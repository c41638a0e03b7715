"""python -m benchmarks [--quick] [--tasks ...] [--out DIR] [--results-md FILE]"""

from benchmarks.cli import main

if __name__ == "__main__":
    main()
