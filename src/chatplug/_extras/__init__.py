"""What is built on the public functions: batches and the tool loop."""
