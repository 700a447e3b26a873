"""The command line (``python -m sync_core ...``): arguments, files, rendering.

Owns the commands (``main``) and what they print (``render``). The top of the stack: may import
every other part (``azure`` for events and the poison queue, ``jobs``, ``report``, ...).
"""
