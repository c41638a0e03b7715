"""python -m benchmarks.lm_spikes: where the stabilised step's cost goes."""

from benchmarks.lm_spikes.cost import cost_breakdown, suite_cost
from benchmarks.lm_spikes.settings import Settings

if __name__ == "__main__":
    print(cost_breakdown(Settings()))
    print()
    print(suite_cost())
