"""What the tests share (paths, CLI runs, toy models, test-only callbacks and strategies): no test module imports another."""
