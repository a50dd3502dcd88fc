"""Task plugins: each module holds one verifiable skill (data generator, prompt
format, scorer). A task is built by Hydra from ``conf/task/<name>.yaml``."""
