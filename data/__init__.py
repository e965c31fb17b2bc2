"""Tokenizers, corpus preparation into shards, the shard format and the resumable loader."""
