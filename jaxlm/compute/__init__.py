"""What training and evaluation both run, below both: `losses` (the loss of each task, chunked
cross-entropy), `step` (the jitted train and eval steps), `sharding` (the device mesh and its
rules), `distributed` (multi-process start-up, the one writer, stopping every process together).
Importing this package imports none of them.
"""
