"""The commands that run a study (docs/commands.md)."""
import time

IMPORTED = time.time()  # when a study command began, where the process start cannot be read (study.plan)
