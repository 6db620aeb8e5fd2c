"""tidal's benchmark suite: `python -m bench` (or `--quick` in CI) writes bench/RESULTS.md.

Every figure is measured side by side with the alternative it is compared with, in one
invocation, interleaved (A B A B ...), with the same allocator settings and thread counts
on both sides; results are medians over repetitions with their min and max.
"""
