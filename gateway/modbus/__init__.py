"""Modbus RTU: frames, value codecs, the block-read planner and the asynchronous serial transport."""
