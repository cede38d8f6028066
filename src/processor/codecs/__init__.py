"""Pure codecs shared by the layers (no I/O, import contracts): the stream's Position
(`position`), fix quality (`quality`), device models' IO values (`io_map`) and the race feed
(`race_feed`)."""
