"""The training engine: the builder (build.py), the loop (loop.py), the step types the objectives see
(steps.py), checkpoints (state.py), batches, named metrics, the progress display, and the worker's entry
point (worker.py). Import the module you need: this package re-exports nothing, so the objectives can
import steps.py without loading the loop."""
